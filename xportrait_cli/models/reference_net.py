"""The appearance (reference) net: a diffusers SD-1.5 UNet without ``out`` head that records the
reference bank.

Official source: ``appearance_control_model`` of ``ControlLDMReferenceOnly_Temporal_Pose_Local``
(``cldm/cldm.py``), a UNet copy run on the clean (or noised) reference latents at the current
timestep; its self-attention inputs are what the main UNet reads (spec §3.3,
:mod:`xportrait_cli.models.reference`). Recording happens in :meth:`ReferenceNet.forward`, so
diffusers' offload hooks, which fire on ``forward``, move it to the device for that call.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config

from xportrait_cli.models.reference import ReferenceBank, install_reference_processors
from xportrait_cli.models.unet import unet_forward


class ReferenceNet(ModelMixin, ConfigMixin):
    """The appearance net (``unet``: a ``UNet2DConditionModel`` whose ``out`` head is removed, as the
    official net has none). A diffusers model: its folder's ``config.json`` is this constructor's
    arguments.

    Args:
        unet_config: ``UNet2DConditionModel`` config of ``unet``, the same as the main UNet's.
    """

    @register_to_config
    def __init__(self, unet_config: dict) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_config)
        self.unet.conv_norm_out = None
        self.unet.conv_act = None
        self.unet.conv_out = None
        self._bank = ReferenceBank()
        install_reference_processors(self.unet, self._bank)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> ReferenceBank:
        """Run on reference latents and return the recorded bank.

        Args:
            sample: ``(R, 4, h, w)`` scaled reference latents (R = 1 shared, or one per frame for
                the official per-frame mode).
            timestep: the current diffusion timestep, scalar or ``(R,)`` in [0, 999] (the official
                net runs at t).
            encoder_hidden_states: the empty prompt's embedding ``(1 or R, 77, C)``.

        Returns:
            A new :class:`ReferenceBank` with one ``(R, tokens, C)`` entry per transformer block (16
            for SD-1.5), in execution order.
        """
        bank = self._bank
        bank.clear()
        bank.recording = True
        try:
            unet_forward(self.unet, sample, timestep, encoder_hidden_states, output_head=False)
        finally:
            bank.recording = False
        recorded = ReferenceBank(tokens=list(bank.tokens))
        bank.clear()
        return recorded
