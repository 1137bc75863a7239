"""How :class:`.XPortraitPipeline` calls its networks, and its offload.

Every network runs through its own ``forward`` (the VAE through ``encode``/``decode``, which
diffusers' ``apply_forward_hook`` treats alike), so diffusers' offloading
(``enable_model_cpu_offload``, ``apply_group_offloading``) can hook each one.
:meth:`NetworkCallsMixin.enable_offload` is diffusers' leaf-level group offloading
(:mod:`xportrait_cli.pipeline.offload`, where the choice is explained with the bytes each strategy
moves); it replaced xportrait's own per-phase offload (each network moved whole for its phase).
"""

from __future__ import annotations

import torch

from xportrait_cli.models.reference import ReferenceBank
from xportrait_cli.pipeline.offload import disable_group_offload, enable_group_offload

#: The networks whose weights :meth:`NetworkCallsMixin.enable_offload` keeps in CPU memory.
OFFLOADED = ("unet", "reference_net", "global_controlnet", "local_controlnet", "vae")


class NetworkCallsMixin:
    """Network calls and offload of :class:`.XPortraitPipeline` (its components ``unet``,
    ``reference_net``, ``global_controlnet``, ``local_controlnet``, ``vae``)."""

    OFFLOADED = OFFLOADED
    _offload_device: torch.device | None = None

    @property
    def _execution_device(self) -> torch.device:
        """Where the networks compute: the offload device while :meth:`enable_offload` is in effect,
        else diffusers' rule (the device of the components or of diffusers' offload hooks)."""
        if self._offload_device is not None:
            return self._offload_device
        return super()._execution_device

    @property
    def offloaded(self) -> bool:
        """Whether :meth:`enable_offload` is in effect."""
        return self._offload_device is not None

    def enable_offload(self, device: str | torch.device):
        """Keep the networks' weights in CPU memory and move each layer to ``device`` just before it
        runs, prefetching the next on a CUDA stream (diffusers' leaf-level group offloading,
        :func:`~xportrait_cli.pipeline.offload.enable_group_offload`): the device holds about one
        layer's weights (0.06 GB in fp16) instead of 5.9 GB, for 28 GB copied host→device a step at
        48 frames (``benchmarks/offload_traffic.py``). Returns ``self``.
        """
        enable_group_offload(self._offloaded_components(), device)
        self._offload_device = torch.device(device)
        return self

    def disable_offload(self):
        """Undo :meth:`enable_offload`: hooks removed, every network back on the execution device.
        Returns ``self``."""
        device, self._offload_device = self._offload_device, None
        if device is not None:
            disable_group_offload(self._offloaded_components(), device)
        return self

    def _offloaded_components(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self, name) for name in OFFLOADED}

    @property
    def scale_factor(self) -> float:
        """The latent scale (official 0.18215): latents are ``scale_factor`` × VAE posterior samples."""
        return self.vae.config.scaling_factor

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The empty prompt's embedding ``(1, 77, C)`` on the execution device, in the run dtype."""
        return self.unet.empty_prompt_embeds.to(self._execution_device, self.dtype)

    def record_reference(self, reference_latents: torch.Tensor, timestep: torch.Tensor) -> ReferenceBank:
        """Run the appearance net on reference latents ``(R, 4, h, w)`` at ``timestep`` (scalar or
        ``(R,)``) and return the recorded bank (:meth:`.ReferenceNet.forward`)."""
        return self.reference_net(reference_latents, timestep, self.prompt_embeds)

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
        context = self.prompt_embeds.expand(latents.shape[0], -1, -1)
        down_g, mid_g = self.global_controlnet(
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
        down, mid = residuals if residuals is not None else (None, None)
        return self.unet(
            latents,
            timestep,
            window_length=window_length,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            reference_tokens=bank.tokens if bank is not None else None,
            reference_skip_rows=skip_rows,
        )
