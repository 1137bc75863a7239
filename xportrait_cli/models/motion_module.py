"""X-Portrait's temporal (motion) module: AnimateDiff v1 "Vanilla" layout, per-frame GroupNorm.

Official source: ``model_lib/ControlNet/ldm/modules/motion_module.py`` (spec §3.6). It differs from
diffusers' ``AnimateDiffTransformer3D`` in that the GroupNorm runs on each frame separately
(``(b·f, C, H, W)``), so it is written here on top of diffusers' ``Attention`` and ``FeedForward``.
Submodule names follow the official checkpoint below ``temporal_transformer.``, so converting a
checkpoint is a re-prefix (see :mod:`xportrait_cli.models.convert`).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

#: Length of the sinusoidal position table (official ``temporal_position_encoding_max_len``).
MAX_FRAMES = 24


def sinusoidal_positions(channels: int, max_len: int = MAX_FRAMES) -> torch.Tensor:
    """The official positional table: ``pe[p, 2i] = sin(p·w_i)``, ``pe[p, 2i+1] = cos(p·w_i)``.

    ``w_i = exp(-2i·ln(10000)/channels)``. Returns a float32 tensor of shape ``(1, max_len, channels)``.
    """
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, max_len, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal frame position to a ``(sequences, frames, C)`` tensor (buffer ``pe``)."""

    def __init__(self, channels: int, max_len: int = MAX_FRAMES) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_positions(channels, max_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalSelfAttention(Attention):
    """Self-attention over the frame axis for every pixel (official ``VersatileAttention``).

    Input and output: ``(sequences, frames, C)``, one sequence per pixel of each video (the
    official ``(b f) d c -> (b d) f c`` rearrangement is done once per module by
    :class:`TemporalModule`). The position encoding is added to the (already LayerNorm-ed) input
    before q, k and v; attention runs through diffusers' SDPA processor.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__(
            query_dim=channels, heads=heads, dim_head=channels // heads, bias=False, out_bias=True
        )
        self.pos_encoder = PositionalEncoding(channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(self.pos_encoder(hidden_states))


class TemporalTransformerBlock(nn.Module):
    """Two temporal self-attentions (pre-LayerNorm, residual) and a GEGLU feed-forward, on
    ``(sequences, frames, C)`` (every op but attention is per token, so the layout is free)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(channels, heads) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(channels) for _ in range(2)])
        self.ff = FeedForward(channels, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            hidden_states = attention(norm(hidden_states)) + hidden_states
        return self.ff(self.ff_norm(hidden_states)) + hidden_states


class TemporalModule(nn.Module):
    """One motion module: per-frame GroupNorm, ``proj_in``, a temporal transformer block, ``proj_out``.

    Input and output: latents-like features ``(batch·frames, C, H, W)`` with frames contiguous per
    video (frame-major inside each video). ``window_length`` is the number of frames per video, the
    sampler's window (16 officially; any length ≤ 24 works). The output adds the module's result to
    its input (official residual).

    Layout: after the GroupNorm the features are transposed once to ``(batch·H·W, frames, C)``, where
    ``proj_in``, the block and ``proj_out`` (all per token but the frame attention) run, and the result
    is added back in the input's NCHW layout — the official code rearranges around each of the two
    attentions instead (same values; the full-size benchmark, ``benchmarks/fullscale.py``, measures
    the difference). The sum keeps the input's contiguous layout so that the next ResNet's
    convolutions do not switch to channels-last.
    """

    def __init__(self, channels: int, heads: int = 8, groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, hidden_states: torch.Tensor, window_length: int) -> torch.Tensor:
        bf, channels, height, width = hidden_states.shape
        if bf % window_length:
            raise ValueError(f"batch {bf} is not a multiple of window_length={window_length}")
        batch, pixels = bf // window_length, height * width
        x = self.norm(hidden_states).view(batch, window_length, channels, pixels)
        x = x.permute(0, 3, 1, 2).reshape(batch * pixels, window_length, channels)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x)
        x = self.proj_out(x).view(batch, pixels, window_length, channels).permute(0, 2, 3, 1)
        out = hidden_states.view(batch, window_length, channels, pixels) + x
        return out.view(bf, channels, height, width)
