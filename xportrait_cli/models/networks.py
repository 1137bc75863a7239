"""The X-Portrait networks in one module: main UNet + motion modules, appearance net, two ControlNets,
VAE, and the empty prompt's text context.

Official model: ``ControlLDMReferenceOnly_Temporal_Pose_Local`` (spec §2–§3). Built from an
:class:`~xportrait_cli.models.architecture.Architecture`; weights come from
:func:`xportrait_cli.models.load_networks`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from xportrait_cli.models.architecture import Architecture
from xportrait_cli.models.reference import ReferenceBank, install_reference_processors
from xportrait_cli.models.unet import XPortraitUNet, unet_forward

#: Token ids of the empty prompt "" for openai/clip-vit-large-patch14: BOS then EOS/padding to 77.
EMPTY_PROMPT_IDS = [49406] + [49407] * 76


def build_reference_unet(config: dict) -> UNet2DConditionModel:
    """The appearance net: a UNet copy without the ``out`` head (the official one has none)."""
    unet = UNet2DConditionModel(**config)
    unet.conv_norm_out = None
    unet.conv_act = None
    unet.conv_out = None
    return unet


class XPortraitNetworks(nn.Module):
    """Every network of X-Portrait, wired for reference attention.

    Attributes:
        unet: :class:`XPortraitUNet`, the main denoiser (reads the reference bank).
        reference_unet: appearance net (diffusers UNet without ``out`` head; writes the bank).
        pose_controlnet: global motion ControlNet (hint: aligned driving frame in [-1, 1]).
        local_controlnet: local motion ControlNet (hint: eye/mouth patches, -1 elsewhere).
        vae: ``AutoencoderKL``; latents are ``scale_factor`` × posterior samples.
        context: buffer ``(1, 77, context_dim)``, CLIP ``last_hidden_state`` of the empty prompt,
            the only text conditioning X-Portrait uses (spec §3.1).
        bank: the :class:`ReferenceBank` shared by both UNets' self-attention processors.
        architecture: the configs these networks were built from.
    """

    def __init__(self, architecture: Architecture) -> None:
        super().__init__()
        self.architecture = architecture
        self.scale_factor = architecture.scale_factor
        self.unet = XPortraitUNet(UNet2DConditionModel(**architecture.unet), heads=architecture.motion_heads)
        self.reference_unet = build_reference_unet(architecture.unet)
        self.pose_controlnet = ControlNetModel(**architecture.controlnet)
        self.local_controlnet = ControlNetModel(**architecture.controlnet)
        self.vae = AutoencoderKL(**architecture.vae)
        width = architecture.unet["cross_attention_dim"]
        self.register_buffer("context", torch.zeros(1, len(EMPTY_PROMPT_IDS), width))
        self.bank = ReferenceBank()
        install_reference_processors(self.unet.unet, self.bank)
        install_reference_processors(self.reference_unet, self.bank)

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def dtype(self) -> torch.dtype:
        return self.context.dtype

    def record_reference(self, reference_latents: torch.Tensor, timestep: torch.Tensor) -> ReferenceBank:
        """Run the appearance net on clean reference latents and return the recorded bank.

        Args:
            reference_latents: ``(R, 4, h, w)`` scaled latents of the reference portrait (R = 1 shared,
                or one per frame for the official per-frame mode).
            timestep: the current diffusion timestep (scalar or ``(R,)``): the official net runs at t.

        Returns:
            A new :class:`ReferenceBank` with one ``(R, tokens, C)`` entry per transformer block.
        """
        bank = self.bank
        bank.clear()
        bank.recording = True
        try:
            unet_forward(self.reference_unet, reference_latents, timestep, self.context, output_head=False)
        finally:
            bank.recording = False
        recorded = ReferenceBank(tokens=list(bank.tokens))
        bank.clear()
        return recorded

    def controlnet_residuals(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        global_hint: torch.Tensor,
        local_hint: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Summed residuals of the global and local ControlNets (weight 1.0 each, official ``amplify_f``).

        Args:
            latents: ``(B, 4, h, w)``; hints ``(B, 3, 8h, 8w)`` in [-1, 1].

        Returns:
            (12 skip residuals, middle residual), in diffusers' ``down_block_additional_residuals`` order.
        """
        context = self.context.expand(latents.shape[0], -1, -1)
        down_g, mid_g = self.pose_controlnet(
            latents, timestep, encoder_hidden_states=context, controlnet_cond=global_hint, return_dict=False
        )
        down_l, mid_l = self.local_controlnet(
            latents, timestep, encoder_hidden_states=context, controlnet_cond=local_hint, return_dict=False
        )
        return [g + loc for g, loc in zip(down_g, down_l, strict=True)], mid_g + mid_l

    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        *,
        num_frames: int,
        bank: ReferenceBank | None = None,
        residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None,
        skip_rows: int = 0,
    ) -> torch.Tensor:
        """Main UNet noise prediction for ``(B, 4, h, w)`` latents, ``B`` a multiple of ``num_frames``.

        ``bank`` (reference tokens) is read by rows ``skip_rows:``; ``residuals`` are ControlNet
        residuals for all B rows (zeros for rows that should get none) or None.
        """
        if bank is not None:
            self.bank.tokens = bank.tokens
            self.bank.start_reading(skip_rows)
        try:
            down, mid = residuals if residuals is not None else (None, None)
            return self.unet(
                latents,
                timestep,
                self.context,
                num_frames=num_frames,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )
        finally:
            self.bank.stop_reading()
            self.bank.clear()


def encode_empty_prompt(text_encoder: CLIPTextModel) -> torch.Tensor:
    """CLIP ``last_hidden_state`` of the empty prompt, ``(1, 77, hidden)`` (causal mask only, no padding
    mask, as the official ``FrozenCLIPEmbedder``)."""
    ids = torch.tensor([EMPTY_PROMPT_IDS], device=text_encoder.device)
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state


def build_text_encoder(architecture: Architecture) -> CLIPTextModel:
    """A CLIP text encoder of the architecture's sizes (weights uninitialised until loaded)."""
    return CLIPTextModel(CLIPTextConfig(**architecture.text))
