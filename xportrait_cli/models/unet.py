"""The main denoiser: a diffusers SD-1.5 ``UNet2DConditionModel`` with X-Portrait's motion modules.

Official source: ``ControlledUnetModelAttn_Temporal_Pose_Local`` (``cldm/cldm.py`` L18–92) on
``UNetModel_Temporal`` (``ldm/modules/diffusionmodules/openaimodel.py``). A motion module runs after
every ResBlock(+transformer) layer of the down path (LDM input blocks 1,2,4,5,7,8,10,11), after
every layer of the up path — after the upsampler where a block has one — and nowhere in the middle
block. The skip saved for the up path is the value after the motion module, and ControlNet residuals
are added to the skips and to the middle-block output. diffusers' own ``UNetMotionModel`` places the
up-path module before the upsampler, so this module walks diffusers' blocks itself
(:func:`unet_forward`); the appearance net uses the same walk without motion modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from xportrait_cli.models.motion_module import TemporalModule
from xportrait_cli.models.reference import ReferenceBank, install_reference_processors


def _time_embedding(unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    timesteps = timestep.reshape(-1).to(sample.device)
    if timesteps.numel() == 1:
        timesteps = timesteps.expand(sample.shape[0])
    t_emb = unet.time_proj(timesteps).to(dtype=sample.dtype)
    return unet.time_embedding(t_emb)


def _layer(resnet, attention, h, emb, context):
    h = resnet(h, emb)
    if attention is not None:
        h = attention(h, encoder_hidden_states=context, return_dict=False)[0]
    return h


def unet_forward(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    down_motion: Sequence[nn.Module] | None = None,
    up_motion: Sequence[nn.Module] | None = None,
    window_length: int | None = None,
    down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
    mid_block_additional_residual: torch.Tensor | None = None,
    output_head: bool = True,
) -> torch.Tensor | None:
    """Run a diffusers SD UNet block by block, with optional motion modules and control residuals.

    Args:
        sample: latents ``(B, 4, h, w)``; with motion modules ``B = videos · window_length``, frames
            contiguous per video.
        window_length: frames per video the motion modules attend over (the sampler's window,
            ``xportrait_cli.pipeline.windows.WINDOW`` = 16 as trained); required with motion modules.
        timestep: scalar or ``(B,)`` diffusion timesteps in [0, 999].
        encoder_hidden_states: text context ``(B, 77, context_dim)`` (``(1, …)`` is broadcast).
        down_motion / up_motion: one module per down layer (8) / up layer (12), or None.
        down_block_additional_residuals: 12 ControlNet residuals, one per skip, in skip order.
        mid_block_additional_residual: ControlNet residual for the middle-block output.
        output_head: False for the appearance net, which has no ``out`` head: returns None.

    Returns:
        The noise prediction ``(B, 4, h, w)``, or None when ``output_head`` is False.

    Raises:
        ValueError: motion modules are given without ``window_length``.
    """
    if window_length is None and (down_motion is not None or up_motion is not None):
        raise ValueError("window_length is required with motion modules")
    context = encoder_hidden_states
    if context.shape[0] == 1 and sample.shape[0] > 1:
        context = context.expand(sample.shape[0], -1, -1)
    emb = _time_embedding(unet, sample, timestep)

    h = unet.conv_in(sample)
    skips = [h]
    layer_index = 0
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = _layer(resnet, attentions[j] if attentions else None, h, emb, context)
            if down_motion is not None:
                h = down_motion[layer_index](h, window_length)
            layer_index += 1
            skips.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
            skips.append(h)

    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    if mid_block_additional_residual is not None:
        h = h + mid_block_additional_residual
    if down_block_additional_residuals is not None:
        skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]

    layer_index = 0
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        last = len(block.resnets) - 1
        for j, resnet in enumerate(block.resnets):
            h = torch.cat([h, skips.pop()], dim=1)
            h = _layer(resnet, attentions[j] if attentions else None, h, emb, context)
            if j == last and block.upsamplers is not None:
                h = block.upsamplers[0](h, skips[-1].shape[-2:] if skips else None)
            if up_motion is not None:
                h = up_motion[layer_index](h, window_length)
            layer_index += 1

    if not output_head:
        return None
    h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def motion_module_channels(unet: UNet2DConditionModel) -> tuple[list[int], list[int]]:
    """Channel width of each down-path and up-path motion module for a diffusers UNet config."""
    widths = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    down = [w for w in widths for _ in range(layers)]
    up = [w for w in reversed(widths) for _ in range(layers + 1)]
    return down, up


class XPortraitUNet(ModelMixin, ConfigMixin):
    """The main denoiser: SD-1.5 UNet (``unet``) plus 8 down and 12 up :class:`TemporalModule`.

    A diffusers model (``save_pretrained`` / ``from_pretrained``; the folder's ``unet/config.json`` is
    this constructor's arguments). It also holds the empty prompt's CLIP embedding, the only text
    conditioning X-Portrait uses (spec §3.1; the CLIP encoder is not shipped), as the persistent
    buffer ``empty_prompt_embeds`` ``(1, 77, cross_attention_dim)``. Its self-attention reads a
    reference bank when ``reference_tokens`` are given (:mod:`xportrait_cli.models.reference`).

    Args:
        unet_config: ``UNet2DConditionModel`` config of ``unet`` (SD-1.5: ``block_out_channels``
            320…1280, 768-wide cross-attention).
        motion_num_attention_heads: heads of each motion module (official 8).
        prompt_length: tokens of the empty prompt's embedding (CLIP's 77).
    """

    @register_to_config
    def __init__(
        self, unet_config: dict, motion_num_attention_heads: int = 8, prompt_length: int = 77
    ) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_config)
        down, up = motion_module_channels(self.unet)
        heads = motion_num_attention_heads
        self.down_motion_modules = nn.ModuleList([TemporalModule(c, heads) for c in down])
        self.up_motion_modules = nn.ModuleList([TemporalModule(c, heads) for c in up])
        width = self.unet.config.cross_attention_dim
        self.register_buffer("empty_prompt_embeds", torch.zeros(1, prompt_length, width))
        self.reference_bank = ReferenceBank()
        install_reference_processors(self.unet, self.reference_bank)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        window_length: int,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        reference_tokens: Sequence[torch.Tensor] | None = None,
        reference_skip_rows: int = 0,
    ) -> torch.Tensor:
        """Noise prediction ``(B, 4, h, w)`` for ``B = videos · window_length`` latents.

        Args:
            sample, timestep, window_length, down_block_additional_residuals,
                mid_block_additional_residual: as :func:`unet_forward`.
            encoder_hidden_states: ``(B or 1, 77, C)``; default ``empty_prompt_embeds``.
            reference_tokens: the appearance net's bank (one ``(R, tokens, C)`` per transformer
                block, :class:`~xportrait_cli.models.reference.ReferenceNet`), read by rows
                ``reference_skip_rows:``; None: plain self-attention.
        """
        if encoder_hidden_states is None:
            encoder_hidden_states = self.empty_prompt_embeds.to(sample.dtype)
        bank = self.reference_bank
        if reference_tokens is not None:
            bank.tokens = list(reference_tokens)
            bank.start_reading(reference_skip_rows)
        try:
            return unet_forward(
                self.unet,
                sample,
                timestep,
                encoder_hidden_states,
                down_motion=self.down_motion_modules,
                up_motion=self.up_motion_modules,
                window_length=window_length,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
            )
        finally:
            bank.stop_reading()
            bank.clear()
