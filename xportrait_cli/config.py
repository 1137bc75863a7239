"""Options of ``xportrait animate``, presets, and the precedence that combines them.

One frozen dataclass, :class:`AnimateOptions`, holds every option of a job. Each field carries its
help text, its command-line flag and its allowed values in ``dataclasses.field(metadata=...)``, so
the Typer command declares ``typer.Option(FLAG, help=help_text(name))`` from the same source that
validates presets and manifests.

Precedence (highest first), applied by :func:`resolve_options`:

- ``xportrait animate``: **flags** (and their environment variables, e.g. ``XPORTRAIT_MODEL``)
  > **preset** (``--preset NAME|FILE``) > **built-in defaults** (the field defaults below; those of
  the sampling options come from :data:`~xportrait_cli.pipeline.defaults.OFFICIAL_DEFAULTS`, which
  ``presets/default.yaml`` equals: the official settings).
- ``xportrait batch``: **job** entry > **manifest defaults** > **preset** > **built-in defaults**.

A layer only overrides the options it sets: ``None`` means "not set" everywhere, so a flag left at
its ``None`` default never masks a preset value.

Keys in presets, manifests and flag mappings are spelled like the fields (``guidance_scale``), with
dashes (``guidance-scale``), as flags (``--guidance-scale``), or with an alias from :data:`ALIASES`
(``steps`` for ``num_inference_steps``). Unknown keys are a :class:`~xportrait_cli.errors.UsageError`
with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import xportrait_cli
from xportrait_cli.errors import UsageError
from xportrait_cli.pipeline.defaults import DEFAULT_REFERENCE_MODE, OFFICIAL_DEFAULTS, REFERENCE_MODES
from xportrait_cli.pipeline.guidance import CONTROL_MODES
from xportrait_cli.pipeline.timesteps import (
    LCM_ORIGINAL_STEPS,
    NUM_TRAIN_TIMESTEPS,
    SCHEDULERS,
    is_valid_step_count,
    nearest_valid_step_counts,
)
from xportrait_cli.pipeline.windows import WINDOW


def _presets_dir() -> Path:
    """The top-level ``presets/`` of a source checkout (editable install), else the copy a wheel
    installs under ``<prefix>/share/xportrait/presets`` (pyproject ``data-files``)."""
    checkout = Path(xportrait_cli.__file__).resolve().parent.parent / "presets"
    installed = Path(sys.prefix) / "share" / "xportrait" / "presets"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


#: The top-level ``presets`` folder of the product layout (beside the package, not inside it).
PRESETS_DIR = _presets_dir()

#: Alternative names accepted for options in presets, manifests and flag mappings.
ALIASES: dict[str, str] = {"steps": "num_inference_steps"}
#: Keys a preset file may hold besides options (ignored when resolving options).
PRESET_META_KEYS = frozenset({"description"})

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _opt(default: Any, help: str, *, flag: str | None = None, choices: Sequence[str] = (), **extra: Any):
    """A dataclass field whose metadata holds the help text, the flag and the allowed values."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices), **extra}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_steps(num_inference_steps: int) -> None:
    """Raise :class:`UsageError` unless ``num_inference_steps`` is a valid official step count
    (:func:`~xportrait_cli.pipeline.timesteps.is_valid_step_count`); the hint names the nearest ones."""
    s = num_inference_steps
    if is_valid_step_count(s):
        return
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= NUM_TRAIN_TIMESTEPS:
        raise UsageError(
            f"invalid num_inference_steps (--steps) {s!r}: must be an integer in 1..{NUM_TRAIN_TIMESTEPS}",
            "30 is the official setting (31 DDIM steps); 15 is the fast preset",
        )
    near = " or ".join(map(str, nearest_valid_step_counts(s)))
    raise UsageError(
        f"invalid num_inference_steps (--steps) {s}: the official DDIM schedule "
        f"arange(0, 1000, 1000//{s}) + 1 would reach timestep {NUM_TRAIN_TIMESTEPS}",
        f"use {near} instead",
    )


# --------------------------------------------------------------------------------------------------
# The options
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnimateOptions:
    """Every option of one ``xportrait animate`` job, validated on construction.

    Field metadata: ``help`` (text for ``--help``), ``flag`` (the command-line flag), ``choices``
    (allowed strings, if any), ``envvar`` (environment variable read by the CLI, if any) and
    ``affects_output`` (False for options that change only speed or memory, see
    :func:`options_to_dict`). CLI-only switches (``--quiet``, ``--json``, ``--output``) are not
    options of the job and are not here.

    Raises :class:`~xportrait_cli.errors.UsageError` naming the option and the value for any bad
    value. Paths are stored as :class:`~pathlib.Path` (``~`` expanded), ``reference`` as a tuple.
    """

    model: Path | None = _opt(
        None,
        "X-Portrait checkpoint (model_state-415001.th or a converted file); default: the weights cache.",
        flag="--model",
        envvar="XPORTRAIT_MODEL",
    )
    model_config: Path | None = _opt(
        None,
        "Model config (official cldm_v15_appearance_pose_local_mm.yaml layout); default: built in.",
        flag="--model-config",
    )
    num_inference_steps: int = _opt(
        OFFICIAL_DEFAULTS.num_inference_steps,
        "DDIM steps S, official meaning: timesteps arange(0,1000,1000//S)+1, so 30 runs 31 steps "
        "and 15 runs 16. S whose schedule reaches timestep 1000 (e.g. 27, 36, 101-111) is refused.",
        flag="--steps",
    )
    guidance_scale: float = _opt(
        OFFICIAL_DEFAULTS.guidance_scale,
        "Classifier-free guidance scale (official uc_scale 5): eps_u + scale*(eps_c - eps_u).",
        flag="--guidance-scale",
    )
    num_mix: int = _opt(
        OFFICIAL_DEFAULTS.num_mix,
        f"Overlapping frames between consecutive {WINDOW}-frame windows (0 <= num_mix < "
        f"{WINDOW}); windows advance by {WINDOW} - num_mix.",
        flag="--num-mix",
    )
    seed: int = _opt(
        OFFICIAL_DEFAULTS.seed,
        "Random seed (0 <= seed < 2**32) for every draw of the sampler; official 999.",
        flag="--seed",
    )
    best_frame: int = _opt(
        -1,
        "Driving frame whose head pose matches the portrait, used for the one alignment transform: "
        "-1 = auto (closest landmarks), -2 = no alignment, N >= 0 = frame N of the selected frames.",
        flag="--best-frame",
    )
    start: int = _opt(0, "First driving frame to use (0-based).", flag="--start")
    frames: int = _opt(0, "Number of driving frames to animate after --start (0 = all).", flag="--frames")
    stride: int = _opt(1, "Use every N-th driving frame (N >= 1).", flag="--stride")
    size: int = _opt(
        512,
        "Square working size in pixels (multiple of 64, >= 64); the model was trained at 512.",
        flag="--size",
    )
    reference: tuple[Path, ...] = _opt(
        (),
        "Extra portrait of the same person (repeatable): its appearance features are added to the "
        "reference bank (official multi-reference).",
        flag="--reference",
    )
    landmarks: str = _opt(
        "auto",
        "Landmark backend: fan (face-alignment, as the official code), dlib (offline 68 points), "
        "auto (fan when its weights are present, else dlib).",
        flag="--landmarks",
        choices=("auto", "fan", "dlib"),
    )
    device: str = _opt(
        "auto",
        "Device: auto, cpu, cuda or cuda:N.",
        flag="--device",
        choices=("auto", "cpu", "cuda", "cuda:N"),
    )
    dtype: str = _opt(
        "auto",
        "Weight and compute precision: auto (fp32 on CPU, fp16 on CUDA), fp32, fp16 or bf16.",
        flag="--dtype",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    reference_mode: str = _opt(
        DEFAULT_REFERENCE_MODE,
        "Appearance features: shared (computed once per step and reused by every window) or "
        "per-frame (recomputed for each window, as the official code).",
        flag="--reference-mode",
        choices=REFERENCE_MODES,
    )
    batch_guidance: str = _opt(
        "auto",
        "Run the conditional and unconditional passes as one batch: on, off (two passes, as the "
        "official code) or auto (on when memory allows). Same result, different speed and memory.",
        flag="--batch-guidance",
        choices=("auto", "on", "off"),
        affects_output=False,
    )
    decode_chunk_size: int = _opt(
        0,
        "Frames per VAE decode call: 0 = automatic (up to 4 on a GPU, from free memory; 2 on the CPU), "
        "or a number >= 1; lower uses less memory.",
        flag="--decode-chunk-size",
        affects_output=False,
    )
    offload: str = _opt(
        "auto",
        "Keep the networks in CPU memory and move each to the GPU only while it runs: on, off or auto "
        "(on only when the job cannot fit the GPU otherwise). Slower; same result.",
        flag="--offload",
        choices=("auto", "on", "off"),
        affects_output=False,
    )
    compile: bool = _opt(
        False, "torch.compile the networks (slow first run).", flag="--compile", affects_output=False
    )
    crop: str = _opt(
        "auto",
        "Crop the portrait and the driving video to a square around the face (one steady box per "
        "video): auto (only inputs that are not square), on (always) or off (the official resize, "
        "which squashes a non-square input).",
        flag="--crop",
        choices=("auto", "on", "off"),
    )
    paste_back: bool = _opt(
        False,
        "Paste the animated crop back into the full portrait (needs --crop auto or on).",
        flag="--paste-back",
    )
    comparison: bool = _opt(
        False, "Also write a side-by-side video: portrait | driving | result.", flag="--comparison"
    )
    init_video: Path | None = _opt(
        None,
        "Build the initial latents from this video's frames instead of the portrait (official "
        "--initial_facevid2vid_results), e.g. a LivePortrait result of the same portrait and driving "
        "clip: same --start/--frames/--stride selection, resized to --size; needs at least as many "
        "frames as the driving selection.",
        flag="--init-video",
    )
    control_mode: str = _opt(
        OFFICIAL_DEFAULTS.control_mode,
        "What the unconditional pass sees: controlnet-important (nothing: guidance amplifies appearance "
        "and motion; official default) or motion-guidance (the reference and mid-grey zero hints too: "
        "guidance amplifies only the motion; official 'balance').",
        flag="--control-mode",
        choices=CONTROL_MODES,
    )
    noised_reference: bool = _opt(
        OFFICIAL_DEFAULTS.noised_reference,
        "Noise the reference latents to each step's timestep, a fresh draw per window (official "
        "--wonoise flag); in shared reference mode one noisy reference per window.",
        flag="--noised-reference",
    )
    guidance_interval: tuple[float, float] = _opt(
        OFFICIAL_DEFAULTS.guidance_interval,
        "Guide only the steps whose position in the schedule (0 = first, 1 = last) lies in LO..HI; the "
        "others run one pass (Kynkaanniemi et al. 2024). Default 0 1: every step, as officially.",
        flag="--guidance-interval",
    )
    lora: str | None = _opt(
        None,
        "LoRA for the main UNet (diffusers/PEFT or kohya .safetensors, a folder, or a Hugging Face "
        "repo id such as latent-consistency/lcm-lora-sdv1-5). Experimental.",
        flag="--lora",
    )
    lora_scale: float = _opt(1.0, "Strength of --lora (0 = no effect).", flag="--lora-scale")
    scheduler: str = _opt(
        OFFICIAL_DEFAULTS.scheduler,
        f"Sampler: ddim (official) or lcm (diffusers LCMScheduler, for an LCM-LoRA: S steps, "
        f"S <= {LCM_ORIGINAL_STEPS}). Experimental.",
        flag="--scheduler",
        choices=SCHEDULERS,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
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

    def replace(self, **changes: Any) -> AnimateOptions:
        """A copy with some options changed (validated again); keys as in :func:`normalize_options`."""
        return dataclasses.replace(self, **normalize_options(changes, source="replace()"))


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AnimateOptions))
_FIELDS = {f.name: f for f in dataclasses.fields(AnimateOptions)}


def option_field(name: str) -> dataclasses.Field:
    """The dataclass field of option ``name`` (canonical, dashed, flag or alias spelling)."""
    return _FIELDS[canonical_key(name, source="option_field()")]


def help_text(name: str) -> str:
    """Help text of option ``name`` for the Typer command, e.g. ``help_text("steps")``."""
    return option_field(name).metadata["help"]


def flag_of(name: str) -> str:
    """The command-line flag of option ``name``, e.g. ``flag_of("num_inference_steps") == "--steps"``."""
    return option_field(name).metadata["flag"]


def default_of(name: str) -> Any:
    """The built-in default of option ``name`` (what ``--help`` shows as the default)."""
    f = option_field(name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# --------------------------------------------------------------------------------------------------
# Per-value validation
# --------------------------------------------------------------------------------------------------


def _label(name: str) -> str:
    flag = _FIELDS[name].metadata["flag"]
    return f"{name} ({flag})" if flag else name


def _bad(name: str, value: Any, why: str, hint: str = "") -> UsageError:
    return UsageError(f"invalid {_label(name)} {value!r}: {why}", hint)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(name, value, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(name, value, "must be an integer")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _bad(name, value, "must be a number")
    try:
        out = float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        out = None
    if out is None or not math.isfinite(out):
        raise _bad(name, value, "must be a finite number")
    return out


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(name, value, "must be true or false")


def _as_path(name: str, value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(value).expanduser()
    raise _bad(name, value, "must be a file path")


def _as_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if name in ("batch_guidance", "offload") and isinstance(value, bool):  # YAML 1.1 reads on/off as bools
        value = "on" if value else "off"
    if name == "crop" and str(value).strip().lower() in (_TRUE | _FALSE) - {"on", "off"}:
        value = "on" if str(value).strip().lower() in _TRUE else "off"  # a bool (the old --crop flag)
    if not isinstance(value, str):
        raise _bad(name, value, f"must be one of {', '.join(choices)}")
    text = value.strip().lower()
    if name == "control_mode":
        text = text.replace("_", "-")
    if name == "device":
        if _DEVICE_RE.match(text):
            return text
    elif text in choices:
        return text
    close = difflib.get_close_matches(text, [c for c in choices if c != "cuda:N"], n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(choices)}"
    raise _bad(name, value, f"must be one of {', '.join(choices)}", hint)


def _as_interval(name: str, value: Any) -> tuple[float, float]:
    """Two numbers ``0 <= lo <= hi <= 1``: a sequence, or a string ``"0.2 0.8"`` / ``"0.2,0.8"``."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, Sequence) or len(value) != 2:
        raise _bad(name, value, "must be two numbers LO HI", "e.g. 0 1 (every step) or 0.2 0.8")
    lo, hi = (_as_float(name, v) for v in value)
    if not 0 <= lo <= hi <= 1:
        raise _bad(name, value, "must satisfy 0 <= LO <= HI <= 1", "0 1 guides every step")
    return (lo, hi)


def _coerce(name: str, value: Any) -> Any:
    """Coerce and validate one option value; raise :class:`UsageError` naming option and value."""
    f = _FIELDS[name]
    choices = f.metadata["choices"]
    if name in ("model", "model_config", "init_video"):
        return None if value is None else _as_path(name, value)
    if name == "lora":
        if value is None:
            return None
        if isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
            return os.path.expanduser(os.fspath(value).strip())
        raise _bad(name, value, "must be a file path or a Hugging Face repo id")
    if name == "guidance_interval":
        return _as_interval(name, value)
    if name == "lora_scale":
        return _as_float(name, value)
    if name == "reference":
        if value is None:
            return ()
        if isinstance(value, str | os.PathLike):
            value = [value]
        if not isinstance(value, Sequence):
            raise _bad(name, value, "must be a list of file paths")
        return tuple(_as_path(name, v) for v in value)
    if choices:
        return _as_choice(name, value, choices)
    if isinstance(f.default, bool):
        return _as_bool(name, value)
    if name == "guidance_scale":
        v = _as_float(name, value)
        if v < 0:
            raise _bad(name, value, "must be >= 0", "5 is the official setting; 1 disables guidance")
        return v
    v = _as_int(name, value)
    if name == "num_inference_steps":
        check_steps(v)
    elif name == "num_mix" and not 0 <= v < WINDOW:
        raise _bad(
            name,
            value,
            f"must be in 0..{WINDOW - 1} (overlap inside a {WINDOW}-frame window)",
            "4 is the official setting",
        )
    elif name == "seed" and not 0 <= v < 2**32:
        raise _bad(name, value, "must be in 0..2**32-1")
    elif name == "best_frame" and v < -2:
        raise _bad(name, value, "must be -1 (auto), -2 (no alignment) or a frame index >= 0")
    elif name in ("start", "frames") and v < 0:
        hint = "0 means all frames" if name == "frames" else ""
        raise _bad(name, value, "must be >= 0", hint)
    elif name == "stride" and v < 1:
        raise _bad(name, value, "must be >= 1")
    elif name == "decode_chunk_size" and v < 0:
        raise _bad(name, value, "must be >= 1, or 0 for automatic")
    elif name == "size" and (v < 64 or v % 64):
        near = max(64, round(v / 64) * 64)
        raise _bad(
            name, value, "must be a multiple of 64 and >= 64", f"use {near} (the model was trained at 512)"
        )
    return v


# --------------------------------------------------------------------------------------------------
# Keys, presets and precedence
# --------------------------------------------------------------------------------------------------


def canonical_key(key: Any, source: str, extra: Sequence[str] = ()) -> str:
    """The canonical name of an option key (underscores, dashes, a leading ``--`` or an alias), or
    of one of the ``extra`` keys a caller also accepts (a manifest's ``portrait``, ``driving`` …).

    Raises :class:`UsageError` naming ``source``, with a difflib suggestion, for any other key.
    """
    if not isinstance(key, str):
        raise UsageError(f"option names must be strings, got {key!r} in {source}")
    name = key.strip().lstrip("-").replace("-", "_").lower()
    name = ALIASES.get(name, name)
    if name in _FIELDS or name in extra:
        return name
    known = sorted(set(extra) | set(OPTION_NAMES) | set(ALIASES))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {ALIASES.get(close[0], close[0])!r}?"
    else:
        hint = f"known options: {', '.join((*extra, *OPTION_NAMES))}"
    raise UsageError(f"unknown option {key!r} in {source}", hint)


def normalize_options(mapping: Mapping[str, Any], source: str = "options") -> dict[str, Any]:
    """Canonical names and validated values for the options a layer sets.

    ``mapping`` keys may use underscores, dashes, a leading ``--`` or an alias (:data:`ALIASES`);
    entries whose value is ``None`` are "not set" and dropped. ``source`` names the layer in error
    messages (``"presets/fast.yaml"``, ``"manifest job 3"``). Raises :class:`UsageError` for an
    unknown key (with a difflib suggestion), a key given twice under two spellings, or a bad value.
    """
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in mapping.items():
        name = canonical_key(key, source)
        if name in spelled:
            raise UsageError(
                f"option {name!r} given twice in {source} (as {spelled[name]!r} and {key!r})",
                "keep one of them",
            )
        spelled[name] = str(key)
        if value is None:
            continue
        try:
            out[name] = _coerce(name, value)
        except UsageError as exc:
            raise UsageError(f"{exc.message} in {source}", exc.hint) from None
    return out


def list_presets() -> dict[str, str]:
    """Presets shipped in :data:`PRESETS_DIR`: name -> description (empty if the file has none)."""
    found: dict[str, str] = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        found[path.stem] = str(data.get("description", "")) if isinstance(data, dict) else ""
    return found


def _preset_path(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    looks_like_path = isinstance(name_or_path, os.PathLike) or any(
        s in text for s in ("/", os.sep, ".yaml", ".yml")
    )
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(
                f"preset file {text!r} not found", "give a path to a .yaml file or a preset name"
            )
        return path
    path = PRESETS_DIR / f"{text}.yaml"
    if path.is_file():
        return path
    names = list(list_presets())
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"available presets: {', '.join(names) or 'none'}"
    raise UsageError(f"unknown preset {text!r}", hint)


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read a preset: a name in :data:`PRESETS_DIR` (``"fast"``) or a path to a YAML file.

    A preset is a flat YAML mapping of options (keys as in :func:`normalize_options`) plus an
    optional ``description``. Relative paths in it (``model``, ``model_config``, ``reference``) are
    taken relative to the preset file's folder. Returns the normalised, validated options it sets.
    Raises :class:`UsageError` for an unknown preset (with a suggestion), a missing or unreadable
    file, invalid YAML, a non-mapping document, an unknown key or a bad value.
    """
    path = _preset_path(name_or_path)
    try:
        shown = path.resolve().relative_to(PRESETS_DIR.parent)
    except ValueError:
        shown = path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read preset {shown}: {exc.strerror or exc}", "check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"invalid YAML in preset {shown}{where}", "fix the file's syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"preset {shown} must be a mapping of option: value", "see presets/default.yaml")
    options = normalize_options({k: v for k, v in data.items() if k not in PRESET_META_KEYS}, str(shown))
    base = path.resolve().parent
    for name in ("model", "model_config", "init_video"):
        if name in options and not options[name].is_absolute():
            options[name] = base / options[name]
    if "lora" in options:
        options["lora"] = local_or_hub(options["lora"], base)
    if "reference" in options:
        options["reference"] = tuple(p if p.is_absolute() else base / p for p in options["reference"])
    return options


def local_or_hub(lora: str, base: Path) -> str:
    """A relative ``lora`` that names an existing file or folder under ``base`` becomes that absolute
    path; anything else (absolute paths, Hugging Face repo ids) is kept as written."""
    candidate = base / lora
    return str(candidate) if not Path(lora).is_absolute() and candidate.exists() else lora


def resolve_options(
    flags: Mapping[str, Any] | None = None,
    preset: str | os.PathLike | None = None,
    defaults_layers: Sequence[Mapping[str, Any]] = (),
) -> AnimateOptions:
    """Combine the option layers into one validated :class:`AnimateOptions`.

    Precedence, highest first: ``flags`` > ``defaults_layers[0]`` > ``defaults_layers[1]`` > ... >
    ``preset`` > built-in defaults. For ``animate``, ``flags`` are the options given on the command
    line and ``defaults_layers`` is empty; for ``batch``, ``flags`` is the job entry and
    ``defaults_layers`` is ``[manifest_defaults]``. In every layer a value of ``None`` means "not
    set", so pass every Typer option with a ``None`` default. Keys as in :func:`normalize_options`.

    Raises :class:`UsageError` for unknown keys, bad values, an unknown preset, or an invalid
    combination (``paste_back`` with ``crop`` off).
    """
    merged: dict[str, Any] = {}
    if preset is not None:
        merged.update(load_preset(preset))
    for i, layer in reversed(list(enumerate(defaults_layers))):
        merged.update(normalize_options(layer, source=f"defaults layer {i}"))
    merged.update(normalize_options(flags or {}, source="flags"))
    return AnimateOptions(**merged)


def options_to_dict(options: AnimateOptions, *, output_only: bool = False) -> dict[str, Any]:
    """Options as a plain JSON-able dict with sorted keys (stable across field reordering).

    Paths become strings, ``reference`` a list of strings. With ``output_only=True`` the options
    that change only speed or memory (metadata ``affects_output=False``: ``batch_guidance``,
    ``decode_chunk_size``, ``offload``, ``compile``) are left out, so a job fingerprint survives
    them. ``resolve_options(options_to_dict(o)) == o``.
    """
    out: dict[str, Any] = {}
    for name in sorted(OPTION_NAMES):
        if output_only and not _FIELDS[name].metadata.get("affects_output", True):
            continue
        value = getattr(options, name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[name] = value
    return out
