"""Options of ``xportrait animate``: one frozen dataclass, :class:`AnimateOptions`, for every job.

Each field carries its help text, its command-line flag, its ``--help`` panel, its allowed values
and its own check in ``dataclasses.field(metadata=...)`` (:func:`xportrait_cli.option_checks.option`),
so the Typer command declares its options from the same source that validates presets and
manifests. Layers of options and their precedence: :mod:`xportrait_cli.option_layers`; presets:
:mod:`xportrait_cli.presets`.

Looking options up by name (any spelling: ``guidance_scale``, ``guidance-scale``,
``--guidance-scale``, an alias), with their help, flag and default: :mod:`xportrait_cli.option_names`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xportrait_cli import option_checks as checks
from xportrait_cli.errors import UsageError
from xportrait_cli.option_checks import option, option_default, option_label
from xportrait_cli.pipeline.defaults import DEFAULT_REFERENCE_MODE, OFFICIAL_DEFAULTS, REFERENCE_MODES
from xportrait_cli.pipeline.guidance import CONTROL_MODES
from xportrait_cli.pipeline.timesteps import LCM_ORIGINAL_STEPS, SCHEDULERS
from xportrait_cli.pipeline.windows import WINDOW

#: ``animate --help`` panels, in the order they are shown.
INPUTS, SAMPLING, ALIGNMENT, OUTPUT, PERFORMANCE = (
    "Inputs",
    "Sampling",
    "Alignment and crop",
    "Output",
    "Performance",
)
PANELS = (INPUTS, SAMPLING, ALIGNMENT, OUTPUT, PERFORMANCE)


@dataclass(frozen=True)
class AnimateOptions:
    """Every option of one ``xportrait animate`` job, validated on construction.

    Field metadata: see :func:`xportrait_cli.option_checks.option`. CLI-only switches (``--quiet``,
    ``--json``, ``--output``) are not options of the job and are not here.

    Raises :class:`~xportrait_cli.errors.UsageError` naming the option and the value for any bad
    value. Paths are stored as :class:`~pathlib.Path` (``~`` expanded), ``reference`` as a tuple.
    """

    model: Path | None = option(
        None,
        "X-Portrait weights: the official .th or .safetensors, a folder made by `xportrait convert`, "
        "or a Hugging Face repo id of one; default: the weights cache.",
        flag="--model",
        envvar="XPORTRAIT_MODEL",
        coerce=checks.optional(checks.as_path),
        path="file_or_hub",
        panel=INPUTS,
    )
    model_config: Path | None = option(
        None,
        "Model config (official cldm_v15_appearance_pose_local_mm.yaml layout); default: built in.",
        flag="--model-config",
        coerce=checks.optional(checks.as_path),
        path="file",
        panel=INPUTS,
    )
    num_inference_steps: int = option(
        OFFICIAL_DEFAULTS.num_inference_steps,
        "DDIM steps S, official meaning: timesteps arange(0,1000,1000//S)+1, so 30 runs 31 steps "
        "and 15 runs 16. S whose schedule reaches timestep 1000 (e.g. 27, 36, 101-111) is refused.",
        flag="--steps",
        coerce=checks.step_count,
        panel=SAMPLING,
    )
    guidance_scale: float = option(
        OFFICIAL_DEFAULTS.guidance_scale,
        "Classifier-free guidance scale (official uc_scale 5): eps_u + scale*(eps_c - eps_u).",
        flag="--guidance-scale",
        coerce=checks.number(
            lambda v: v >= 0, "must be >= 0", "5 is the official setting; 1 disables guidance"
        ),
        panel=SAMPLING,
    )
    num_mix: int = option(
        OFFICIAL_DEFAULTS.num_mix,
        f"Overlapping frames between consecutive {WINDOW}-frame windows (0 <= num_mix < "
        f"{WINDOW}); windows advance by {WINDOW} - num_mix.",
        flag="--num-mix",
        coerce=checks.integer(
            lambda v: 0 <= v < WINDOW,
            f"must be in 0..{WINDOW - 1} (overlap inside a {WINDOW}-frame window)",
            "4 is the official setting",
        ),
        panel=SAMPLING,
    )
    seed: int = option(
        OFFICIAL_DEFAULTS.seed,
        "Random seed (0 <= seed < 2**32) for every draw of the sampler; official 999.",
        flag="--seed",
        coerce=checks.integer(lambda v: 0 <= v < 2**32, "must be in 0..2**32-1"),
        panel=SAMPLING,
    )
    best_frame: int = option(
        -1,
        "Driving frame whose head pose matches the portrait, used for the one alignment transform: "
        "-1 = auto (closest landmarks), -2 = no alignment, N >= 0 = frame N of the selected frames.",
        flag="--best-frame",
        coerce=checks.integer(
            lambda v: v >= -2, "must be -1 (auto), -2 (no alignment) or a frame index >= 0"
        ),
        panel=ALIGNMENT,
    )
    start: int = option(
        0,
        "First driving frame to use (0-based).",
        flag="--start",
        coerce=checks.integer(lambda v: v >= 0, "must be >= 0"),
        panel=INPUTS,
    )
    frames: int = option(
        0,
        "Number of driving frames to animate after --start (0 = all).",
        flag="--frames",
        coerce=checks.integer(lambda v: v >= 0, "must be >= 0", "0 means all frames"),
        panel=INPUTS,
    )
    stride: int = option(
        1,
        "Use every N-th driving frame (N >= 1).",
        flag="--stride",
        coerce=checks.integer(lambda v: v >= 1, "must be >= 1"),
        panel=INPUTS,
    )
    size: int = option(
        512,
        "Square working size in pixels (multiple of 64, >= 64); the model was trained at 512.",
        flag="--size",
        coerce=checks.integer(
            lambda v: v >= 64 and v % 64 == 0, "must be a multiple of 64 and >= 64", checks.size_hint
        ),
        panel=OUTPUT,
    )
    reference: tuple[Path, ...] = option(
        (),
        "Extra portrait of the same person (repeatable): its appearance features are added to the "
        "reference bank (official multi-reference).",
        flag="--reference",
        coerce=checks.paths,
        path="files",
        panel=INPUTS,
    )
    landmarks: str = option(
        "auto",
        "Landmark backend: fan (face-alignment, as the official code), dlib (offline 68 points), "
        "auto (fan when its weights are present, else dlib).",
        flag="--landmarks",
        choices=("auto", "fan", "dlib"),
        panel=ALIGNMENT,
    )
    device: str = option(
        "auto",
        "Device: auto, cpu, cuda or cuda:N.",
        flag="--device",
        choices=("auto", "cpu", "cuda", "cuda:N"),
        pattern=checks.DEVICE_RE,
        panel=PERFORMANCE,
    )
    dtype: str = option(
        "auto",
        "Weight and compute precision: auto (fp16 on CUDA, the precision download-weights converts to; "
        "fp32 on the CPU), fp32, fp16 or bf16.",
        flag="--dtype",
        choices=("auto", "fp32", "fp16", "bf16"),
        panel=PERFORMANCE,
    )
    reference_mode: str = option(
        DEFAULT_REFERENCE_MODE,
        "Appearance features: shared (computed once per step and reused by every window) or "
        "per-frame (recomputed for each window, as the official code).",
        flag="--reference-mode",
        choices=REFERENCE_MODES,
        panel=SAMPLING,
    )
    batch_guidance: str = option(
        "auto",
        "Run the conditional and unconditional passes as one batch: on, off (two passes, as the "
        "official code) or auto (on when memory allows). Same result, different speed and memory.",
        flag="--batch-guidance",
        choices=("auto", "on", "off"),
        affects_output=False,
        pre=checks.yaml_on_off,
        panel=PERFORMANCE,
    )
    decode_chunk_size: int = option(
        0,
        "Frames per VAE decode call: 0 = automatic (up to 4 on a GPU, from free memory; 2 on the CPU), "
        "or a number >= 1; lower uses less memory.",
        flag="--decode-chunk-size",
        affects_output=False,
        coerce=checks.integer(lambda v: v >= 0, "must be >= 1, or 0 for automatic"),
        panel=PERFORMANCE,
    )
    offload: str = option(
        "auto",
        "Keep the networks in CPU memory and move each to the GPU only while it runs: on, off or auto "
        "(on only when the job cannot fit the GPU otherwise). Slower; same result.",
        flag="--offload",
        choices=("auto", "on", "off"),
        affects_output=False,
        pre=checks.yaml_on_off,
        panel=PERFORMANCE,
    )
    compile: bool = option(
        False,
        "torch.compile the networks (slow first run).",
        flag="--compile",
        affects_output=False,
        panel=PERFORMANCE,
    )
    crop: str = option(
        "auto",
        "Crop the portrait and the driving video to a square around the face (one steady box per "
        "video): auto (only inputs that are not square), on (always) or off (the official resize, "
        "which squashes a non-square input).",
        flag="--crop",
        choices=("auto", "on", "off"),
        pre=checks.truthy_on_off,
        panel=ALIGNMENT,
    )
    paste_back: bool = option(
        False,
        "Paste the animated crop back into the original portrait: the output has the portrait's size "
        "(needs --crop auto or on).",
        flag="--paste-back",
        panel=OUTPUT,
    )
    comparison: bool = option(
        False,
        "Also write a side-by-side video: portrait | driving | result.",
        flag="--comparison",
        panel=OUTPUT,
    )
    init_video: Path | None = option(
        None,
        "Build the initial latents from this video's frames instead of the portrait (official "
        "--initial_facevid2vid_results), e.g. a LivePortrait result of the same portrait and driving "
        "clip: same --start/--frames/--stride selection, resized to --size; needs at least as many "
        "frames as the driving selection.",
        flag="--init-video",
        coerce=checks.optional(checks.as_path),
        path="file",
        panel=INPUTS,
    )
    control_mode: str = option(
        OFFICIAL_DEFAULTS.control_mode,
        "What the unconditional pass sees: controlnet-important (nothing: guidance amplifies appearance "
        "and motion; official default) or motion-guidance (the reference and mid-grey zero hints too: "
        "guidance amplifies only the motion; official 'balance').",
        flag="--control-mode",
        choices=CONTROL_MODES,
        pre=checks.dashes,
        panel=SAMPLING,
    )
    noised_reference: bool = option(
        OFFICIAL_DEFAULTS.noised_reference,
        "Noise the reference latents to each step's timestep, a fresh draw per window (official "
        "--wonoise flag); in shared reference mode one noisy reference per window.",
        flag="--noised-reference",
        panel=SAMPLING,
    )
    guidance_interval: tuple[float, float] = option(
        OFFICIAL_DEFAULTS.guidance_interval,
        "Guide only the steps whose position in the schedule (0 = first, 1 = last) lies in LO..HI; the "
        "others run one pass (Kynkaanniemi et al. 2024). Default 0 1: every step, as officially.",
        flag="--guidance-interval",
        coerce=checks.as_interval,
        panel=SAMPLING,
    )
    lora: str | None = option(
        None,
        "LoRA for the main UNet (diffusers/PEFT or kohya .safetensors, a folder, or a Hugging Face "
        "repo id such as latent-consistency/lcm-lora-sdv1-5). Experimental.",
        flag="--lora",
        coerce=checks.optional(checks.path_or_repo),
        path="local_or_hub",
        panel=SAMPLING,
    )
    lora_scale: float = option(
        1.0,
        "Strength of --lora (0 = no effect).",
        flag="--lora-scale",
        coerce=checks.number(),
        panel=SAMPLING,
    )
    scheduler: str = option(
        OFFICIAL_DEFAULTS.scheduler,
        f"Sampler: ddim (official) or lcm (diffusers LCMScheduler, for an LCM-LoRA: S steps, "
        f"S <= {LCM_ORIGINAL_STEPS}). Experimental.",
        flag="--scheduler",
        choices=SCHEDULERS,
        panel=SAMPLING,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["coerce"](option_label(f), getattr(self, f.name)))
        self._check_combination()

    def _check_combination(self) -> None:
        """Checks that involve two options (each value is already valid on its own)."""
        if self.paste_back and self.crop == "off":
            raise UsageError(
                "invalid paste_back (--paste-back) with crop off",
                "use --crop auto or on, or drop --paste-back",
            )
        if self.scheduler == "lcm" and self.num_inference_steps > LCM_ORIGINAL_STEPS:
            raise UsageError(
                f"invalid num_inference_steps (--steps) {self.num_inference_steps} with --scheduler lcm: "
                f"at most {LCM_ORIGINAL_STEPS}",
                "LCM needs few steps: 4-8",
            )

    @classmethod
    def _from_normalized(cls, values: Mapping[str, Any]) -> AnimateOptions:
        """Build from values :func:`normalize_options` has already coerced (not coerced again);
        options missing from ``values`` take their built-in default."""
        self = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(self, f.name, values[f.name] if f.name in values else option_default(f))
        self._check_combination()
        return self

    def replace(self, **changes: Any) -> AnimateOptions:
        """A copy with some options changed (validated again); keys as in :func:`normalize_options`."""
        from xportrait_cli.option_layers import normalize_options  # it builds on this module

        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return self._from_normalized({**current, **normalize_options(changes, source="replace()")})
