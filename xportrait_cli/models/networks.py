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

    #: The networks moved as units by :meth:`use` when offloading (``context`` stays on the device).
    OFFLOADED = ("unet", "reference_unet", "pose_controlnet", "local_controlnet", "vae")

    @property
    def device(self) -> torch.device:
        """The execution device (where ``context`` lives, also when the networks are offloaded)."""
        return self.context.device

    @property
    def offloaded(self) -> bool:
        """Whether :meth:`enable_offload` is in effect."""
        return getattr(self, "_offload_device", None) is not None

    def enable_offload(self, device: str | torch.device) -> XPortraitNetworks:
        """Keep the networks in CPU memory and move each to ``device`` only for its phase (see
        :meth:`use`): GPU memory then holds one network at a time, the largest being the main UNet
        (860 M parameters, 1.7 GB in bf16, instead of 6.1 GB for all). Costs the copies: each phase
        switch moves up to two networks over PCIe. Like the ComfyUI port's manual offloading, per
        network instead of per stage. Returns ``self``.
        """
        self._offload_device = torch.device(device)
        self._resident: tuple[str, ...] = ()
        for name in self.OFFLOADED:
            getattr(self, name).to("cpu")
        self.context = self.context.to(self._offload_device)
        return self

    def disable_offload(self) -> XPortraitNetworks:
        """Undo :meth:`enable_offload`: every network back on the execution device. Returns ``self``."""
        device, self._offload_device = self.device, None
        return self.to(device)

    def use(self, *names: str) -> None:
        """Phase switch: with offloading, move networks ``names`` (of :attr:`OFFLOADED`) to the
        execution device and the others to the CPU; without offloading, nothing.

        Raises:
            KeyError: a name that is not one of :attr:`OFFLOADED`.
        """
        unknown = set(names) - set(self.OFFLOADED)
        if unknown:
            raise KeyError(f"not an offloadable network: {sorted(unknown)}")
        if not self.offloaded or self._resident == names:
            return
        for name in self.OFFLOADED:
            if name not in names and name in self._resident:
                getattr(self, name).to("cpu")
        for name in names:
            getattr(self, name).to(self._offload_device)
        self._resident = names

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
        self.use("reference_unet")
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
        self.use("pose_controlnet", "local_controlnet")
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
        window_length: int,
        bank: ReferenceBank | None = None,
        residuals: tuple[list[torch.Tensor], torch.Tensor] | None = None,
        skip_rows: int = 0,
    ) -> torch.Tensor:
        """Main UNet noise prediction for ``(B, 4, h, w)`` latents, ``B`` a multiple of ``window_length``.

        ``bank`` (reference tokens) is read by rows ``skip_rows:``; ``residuals`` are ControlNet
        residuals for all B rows (zeros for rows that should get none) or None.
        """
        self.use("unet")
        if bank is not None:
            self.bank.tokens = bank.tokens
            self.bank.start_reading(skip_rows)
        try:
            down, mid = residuals if residuals is not None else (None, None)
            return self.unet(
                latents,
                timestep,
                self.context,
                window_length=window_length,
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
