"""How :class:`.XPortraitPipeline` calls its networks, and its per-phase offload.

Every network runs through its own ``forward`` (the VAE through ``encode``/``decode``, which
diffusers' ``apply_forward_hook`` treats alike), so diffusers' offloading
(``enable_model_cpu_offload``, ``apply_group_offloading``) can hook each one. The per-phase offload
here (:meth:`NetworkCallsMixin.enable_offload`) is xportrait's own: each network moved to the
device only for its phase (:meth:`NetworkCallsMixin.use`).
"""

from __future__ import annotations

import torch

from xportrait_cli.models.reference import ReferenceBank

#: The networks moved as units by :meth:`NetworkCallsMixin.use` when offloading.
OFFLOADED = ("unet", "reference_net", "global_controlnet", "local_controlnet", "vae")


class NetworkCallsMixin:
    """Network calls and per-phase offload of :class:`.XPortraitPipeline` (its components ``unet``,
    ``reference_net``, ``global_controlnet``, ``local_controlnet``, ``vae``)."""

    OFFLOADED = OFFLOADED
    _phase_device: torch.device | None = None
    _resident: tuple[str, ...] = ()

    @property
    def _execution_device(self) -> torch.device:
        """Where the networks compute: the offload device while :meth:`enable_offload` is in effect,
        else diffusers' rule (the device of the components or of diffusers' offload hooks)."""
        if self._phase_device is not None:
            return self._phase_device
        return super()._execution_device

    @property
    def offloaded(self) -> bool:
        """Whether :meth:`enable_offload` is in effect."""
        return self._phase_device is not None

    def enable_offload(self, device: str | torch.device):
        """Keep the networks in CPU memory and move each to ``device`` only for its phase (see
        :meth:`use`): device memory then holds one network at a time, the largest being the main
        UNet (860 M parameters, 1.7 GB in bf16, instead of 6.1 GB for all). Costs the copies: each
        phase switch moves up to two networks over PCIe. Like the ComfyUI port's manual offloading,
        per network instead of per stage. Not to be combined with diffusers' offload hooks.
        Returns ``self``.
        """
        for name in OFFLOADED:
            getattr(self, name).to("cpu")
        self._phase_device, self._resident = torch.device(device), ()
        return self

    def disable_offload(self):
        """Undo :meth:`enable_offload`: every network back on the execution device. Returns ``self``."""
        device, self._phase_device, self._resident = self._phase_device, None, ()
        return self.to(device) if device is not None else self

    def use(self, *names: str) -> None:
        """Phase switch: with :meth:`enable_offload`, move networks ``names`` (of :data:`OFFLOADED`)
        to the execution device and the others to the CPU; otherwise nothing.

        Raises:
            KeyError: a name that is not one of :data:`OFFLOADED`.
        """
        unknown = set(names) - set(OFFLOADED)
        if unknown:
            raise KeyError(f"not an offloadable network: {sorted(unknown)}")
        if not self.offloaded or self._resident == names:
            return
        for name in OFFLOADED:
            if name not in names and name in self._resident:
                getattr(self, name).to("cpu")
        for name in names:
            getattr(self, name).to(self._phase_device)
        self._resident = names

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
        self.use("reference_net")
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
        self.use("global_controlnet", "local_controlnet")
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
        self.use("unet")
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
