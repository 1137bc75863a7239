"""The sampler's defaults, stated once (pure Python: importable without torch).

:data:`OFFICIAL_DEFAULTS` holds the official settings of the sampling options: the values of
``scripts/test_xportrait.sh`` (``--ddim_steps 30 --uc_scale 5 --num_mix 4 --seed 999``) and, for the
options the script leaves out, the argparse defaults of ``core/test_xportrait.py`` L443–502
(``--control_mode controlnet_important``, ``--wonoise`` unset: the reference latents stay clean),
with guidance on every step and the DDIM sampler. ``XPortraitPipeline.__call__``'s keyword
defaults, ``AnimateOptions``' field defaults and ``presets/default.yaml`` all equal it (a test holds
the preset to it).

``reference_mode`` is not among them: its default, :data:`DEFAULT_REFERENCE_MODE`, is ours (one
reference per step shared by every frame), while the official sampler draws one per frame
(``"per-frame"``, kept for golden parity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xportrait_cli.pipeline.guidance import CONTROL_MODES, FULL_INTERVAL
from xportrait_cli.pipeline.timesteps import SCHEDULERS

#: ``reference_mode`` values: one reference computed once per step and shared by every frame (default),
#: or the official per-frame posterior samples (16 appearance-net copies per window; golden parity).
REFERENCE_MODES = ("shared", "per-frame")
DEFAULT_REFERENCE_MODE = REFERENCE_MODES[0]


@dataclass(frozen=True)
class SamplingDefaults:
    """Default values of the sampling options, named as the options (see the module docstring).

    Attributes:
        num_inference_steps: official ``--ddim_steps 30`` (31 DDIM steps, see :mod:`.timesteps`).
        guidance_scale: official ``--uc_scale 5``.
        num_mix: official ``--num_mix 4``, the overlap of consecutive 16-frame windows.
        seed: official ``--seed 999``.
        control_mode: official ``control_mode="controlnet_important"`` (:mod:`.guidance`).
        noised_reference: official ``--wonoise`` left unset, so no noise on the reference latents.
        guidance_interval: ``(0, 1)``: guidance on every step, as officially.
        scheduler: ``"ddim"``, the official sampler.
    """

    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    num_mix: int = 4
    seed: int = 999
    control_mode: str = CONTROL_MODES[0]
    noised_reference: bool = False
    guidance_interval: tuple[float, float] = FULL_INTERVAL
    scheduler: str = SCHEDULERS[0]

    def as_dict(self) -> dict[str, object]:
        """The defaults as ``{option name: value}`` (e.g. to compare with a preset)."""
        return asdict(self)


#: The official settings; see :class:`SamplingDefaults`.
OFFICIAL_DEFAULTS = SamplingDefaults()
