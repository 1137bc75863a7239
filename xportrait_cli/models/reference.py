"""Reference (appearance) attention: the appearance net writes, the main UNet reads.

Official source: ``ReferenceOnly`` "write"/"read" banks in ``ldm/modules/attention.py`` (spec §3.3).
In every transformer block the appearance net records the input of its self-attention (``norm1(x)``,
shape ``(R, tokens, C)``); in the k-th block of the main UNet, self-attention takes queries from its
own tokens and keys/values from ``concat([own tokens, bank[k]], dim=tokens)``, with the main UNet's
own ``to_k``/``to_v``. Cross-attention to the text context is unchanged.

The bank's batch ``R`` is either 1 (one reference shared by every frame: our default, computed once
per timestep) or the number of reading rows (the official per-frame references). Extra reference
portraits (official ``more_source_image_pattern``) are concatenated along the token axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


@dataclass
class ReferenceBank:
    """Tokens recorded by the appearance net and how the main UNet reads them.

    Attributes:
        tokens: one ``(R, tokens, C)`` tensor per transformer block, in execution order (16 for
            SD-1.5: input blocks 1,2,4,5,7,8; middle; output blocks 3–11).
        recording: True while the appearance net runs (its processors append to ``tokens``).
        reading: True while the main UNet should read the bank.
        skip_rows: leading batch rows that do not read (the unconditional half of a batched
            guidance pass); the remaining rows read.
    """

    tokens: list[torch.Tensor] = field(default_factory=list)
    recording: bool = False
    reading: bool = False
    skip_rows: int = 0
    _cursor: int = 0

    def clear(self) -> None:
        self.tokens = []
        self._cursor = 0

    def next_tokens(self) -> torch.Tensor:
        """The bank entry of the next transformer block of the reading UNet (cycles per forward)."""
        entry = self.tokens[self._cursor]
        self._cursor = (self._cursor + 1) % len(self.tokens)
        return entry

    def concat(self, other: ReferenceBank) -> ReferenceBank:
        """Concatenate another reference's tokens along the token axis (multi-reference).

        A batch of 1 on either side is broadcast to the other's batch.
        """
        merged = []
        for a, b in zip(self.tokens, other.tokens, strict=True):
            rows = max(a.shape[0], b.shape[0])
            merged.append(torch.cat([a.expand(rows, -1, -1), b.expand(rows, -1, -1)], dim=1))
        return ReferenceBank(tokens=merged)

    def repeat_rows(self, times: int) -> ReferenceBank:
        """The bank for a batch of ``times`` stacked copies of its reading rows (a batch of 1 stays
        1: it is broadcast)."""
        return ReferenceBank(tokens=[t if t.shape[0] == 1 else t.repeat(times, 1, 1) for t in self.tokens])

    def start_reading(self, skip_rows: int = 0) -> None:
        """Make the main UNet's next forward read the bank from its first entry."""
        self.reading, self.skip_rows, self._cursor = True, skip_rows, 0

    def stop_reading(self) -> None:
        self.reading, self.skip_rows, self._cursor = False, 0, 0


def _attend(attn: Attention, query_tokens: torch.Tensor, kv_tokens: torch.Tensor | None, kv_ref=None):
    """SDPA attention of ``query_tokens`` (B, L, C) over ``kv_tokens`` (B, L', C) (+ a shared ref)."""
    batch = query_tokens.shape[0]
    head_dim = attn.to_q.out_features // attn.heads
    q = attn.to_q(query_tokens)
    k = attn.to_k(kv_tokens)
    v = attn.to_v(kv_tokens)
    if kv_ref is not None:
        k_ref, v_ref = attn.to_k(kv_ref), attn.to_v(kv_ref)
        if k_ref.shape[0] != batch:
            k_ref = k_ref.expand(batch, -1, -1)
            v_ref = v_ref.expand(batch, -1, -1)
        k = torch.cat([k, k_ref], dim=1)
        v = torch.cat([v, v_ref], dim=1)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
    return attn.to_out[1](attn.to_out[0](out))


class ReferenceAttnProcessor:
    """Self-attention processor (``attn1``) that records into or reads from a :class:`ReferenceBank`.

    Recording: stores ``hidden_states`` (the block's ``norm1`` output, ``(B, tokens, C)``) and runs
    plain self-attention. Reading: rows ``skip_rows:`` attend over their own tokens followed by the
    bank entry (broadcast from batch 1 when shared); rows ``:skip_rows`` run plain self-attention.
    When the bank is idle the processor is plain SDPA self-attention.
    """

    def __init__(self, bank: ReferenceBank) -> None:
        self.bank = bank

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ) -> torch.Tensor:
        bank = self.bank
        if bank.recording:
            bank.tokens.append(hidden_states)
        if not bank.reading:
            return _attend(attn, hidden_states, hidden_states)
        ref = bank.next_tokens()
        skip = bank.skip_rows
        if skip == 0:
            return _attend(attn, hidden_states, hidden_states, ref)
        plain = _attend(attn, hidden_states[:skip], hidden_states[:skip])
        read = _attend(attn, hidden_states[skip:], hidden_states[skip:], ref)
        return torch.cat([plain, read], dim=0)


def install_reference_processors(unet: nn.Module, bank: ReferenceBank) -> int:
    """Put a :class:`ReferenceAttnProcessor` on every self-attention (``attn1``) of a diffusers UNet.

    Returns the number of transformer blocks wired (16 for SD-1.5). Cross-attention keeps its
    default SDPA processor.
    """
    count = 0
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.endswith("attn1"):
            module.set_processor(ReferenceAttnProcessor(bank))
            count += 1
    return count
