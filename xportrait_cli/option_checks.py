"""The per-value checks the option fields declare (``coerce=`` in :func:`option`).

Each check is ``coerce(label, value)``: it returns ``value`` in the field's stored type (``"20"`` →
``20``, ``"~/a.png"`` → ``Path``, ``"CUDA:1"`` → ``"cuda:1"``) or raises
:class:`~xportrait_cli.errors.UsageError` ``invalid <label> <value>: <why>`` with a hint; ``label``
is the option and its flag (``"size (--size)"``). Factories such as :func:`integer` build a check
from a condition, so each field states its own range next to its help text; :func:`option`
declares a field. Also the two path rules
shared by presets and manifests (:func:`anchor`, :func:`local_or_hub`). Imports no torch.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field
from pathlib import Path
from typing import Any

from xportrait_cli.errors import UsageError
from xportrait_cli.pipeline.timesteps import (
    NUM_TRAIN_TIMESTEPS,
    is_valid_step_count,
    nearest_valid_step_counts,
)
from xportrait_cli.weights.registry import looks_like_repo_id

#: ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}

#: One field's check: ``coerce(label, value)`` returns the value in the field's type or raises.
Coerce = Callable[[str, Any], Any]


def _bad(label: str, value: Any, why: str, hint: str = "") -> UsageError:
    return UsageError(f"invalid {label} {value!r}: {why}", hint)


def as_int(label: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(label, value, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(label, value, "must be an integer")


def as_float(label: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _bad(label, value, "must be a number")
    try:
        out = float(value) if isinstance(value, int | float | str) else None
    except ValueError:
        out = None
    if out is None or not math.isfinite(out):
        raise _bad(label, value, "must be a finite number")
    return out


def _ranged(convert: Coerce, ok: Callable[[Any], bool] | None, why: str, hint: str | Callable) -> Coerce:
    def coerce(label: str, value: Any) -> Any:
        v = convert(label, value)
        if ok is not None and not ok(v):
            raise _bad(label, value, why, hint(v) if callable(hint) else hint)
        return v

    return coerce


def integer(ok: Callable[[int], bool] | None = None, why: str = "", hint: str | Callable = "") -> Coerce:
    """An integer (``"20"`` and ``20.0`` accepted) for which ``ok`` holds, else ``why``/``hint``."""
    return _ranged(as_int, ok, why, hint)


def number(ok: Callable[[float], bool] | None = None, why: str = "", hint: str = "") -> Coerce:
    """A finite number for which ``ok`` holds, else ``why``/``hint``."""
    return _ranged(as_float, ok, why, hint)


def size_hint(v: int) -> str:
    return f"use {max(64, round(v / 64) * 64)} (the model was trained at 512)"


def step_count(label: str, value: Any) -> int:
    v = as_int(label, value)
    check_steps(v)
    return v


def as_bool(label: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(label, value, "must be true or false")


def as_path(label: str, value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(value).expanduser()
    raise _bad(label, value, "must be a file path")


def optional(convert: Coerce) -> Coerce:
    """``None`` (not given) or ``convert``'s value."""
    return lambda label, value: None if value is None else convert(label, value)


def paths(label: str, value: Any) -> tuple[Path, ...]:
    """One path or a list of them, as a tuple (``None``: none)."""
    if value is None:
        return ()
    if isinstance(value, str | os.PathLike):
        value = [value]
    if not isinstance(value, Sequence):
        raise _bad(label, value, "must be a list of file paths")
    return tuple(as_path(label, v) for v in value)


def path_or_repo(label: str, value: Any) -> str:
    """A local path or a Hugging Face repo id, kept as a string (``~`` expanded)."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return os.path.expanduser(os.fspath(value).strip())
    raise _bad(label, value, "must be a file path or a Hugging Face repo id")


def as_interval(label: str, value: Any) -> tuple[float, float]:
    """Two numbers ``0 <= lo <= hi <= 1``: a sequence, or a string ``"0.2 0.8"`` / ``"0.2,0.8"``."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, Sequence) or len(value) != 2:
        raise _bad(label, value, "must be two numbers LO HI", "e.g. 0 1 (every step) or 0.2 0.8")
    lo, hi = (as_float(label, v) for v in value)
    if not 0 <= lo <= hi <= 1:
        raise _bad(label, value, "must satisfy 0 <= LO <= HI <= 1", "0 1 guides every step")
    return (lo, hi)


def yaml_on_off(value: Any) -> Any:
    """YAML 1.1 reads ``on``/``off`` as bools: back to the words."""
    return ("on" if value else "off") if isinstance(value, bool) else value


def truthy_on_off(value: Any) -> Any:
    """A bool or yes/no/true/false/1/0 (the old boolean ``--crop`` flag) as ``on``/``off``."""
    text = str(value).strip().lower()
    if text in (_TRUE | _FALSE) - {"on", "off"}:
        return "on" if text in _TRUE else "off"
    return value


def dashes(value: Any) -> Any:
    return value.replace("_", "-") if isinstance(value, str) else value


def choice(choices: Sequence[str], pre: Callable[[Any], Any] | None = None, pattern=None) -> Coerce:
    """One of ``choices`` (case-insensitive, after ``pre``), or any text ``pattern`` matches."""

    def coerce(label: str, value: Any) -> str:
        if pre is not None:
            value = pre(value)
        if not isinstance(value, str):
            raise _bad(label, value, f"must be one of {', '.join(choices)}")
        text = value.strip().lower()
        if pattern.match(text) if pattern is not None else text in choices:
            return text
        close = difflib.get_close_matches(text, [c for c in choices if c != "cuda:N"], n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(choices)}"
        raise _bad(label, value, f"must be one of {', '.join(choices)}", hint)

    return coerce


def option(
    default: Any,
    help: str,
    *,
    flag: str,
    panel: str,
    choices: Sequence[str] = (),
    coerce: Coerce | None = None,
    pre: Callable[[Any], Any] | None = None,
    pattern: re.Pattern | None = None,
    **extra: Any,
):
    """Declare one option of :class:`~xportrait_cli.config.AnimateOptions`: a dataclass field whose
    metadata holds ``help`` (its ``--help`` text), ``flag`` (the command-line flag), ``panel`` (its
    ``--help`` panel), ``choices`` (allowed strings, if any) and ``coerce``, the field's own check:
    the one given, else :func:`choice` over ``choices`` (after ``pre``, or any text ``pattern``
    matches), else :func:`as_bool`. ``extra`` keys: ``envvar`` (read by the CLI), ``path`` (how a
    relative path is anchored: ``"file"``, ``"files"`` or ``"local_or_hub"``, see
    :func:`xportrait_cli.option_layers.anchor_paths`) and ``affects_output`` (False for options that
    change only speed or memory: the job fingerprint leaves them out)."""
    if coerce is None:
        coerce = choice(choices, pre, pattern) if choices else as_bool
    meta = {"help": help, "flag": flag, "panel": panel, "choices": tuple(choices), "coerce": coerce, **extra}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def option_label(f: Field) -> str:
    """An option as error messages name it, from its field: ``"size (--size)"``."""
    return f"{f.name} ({f.metadata['flag']})"


def option_default(f: Field) -> Any:
    """The built-in default of an option's field (what ``--help`` shows as the default)."""
    return f.default_factory() if f.default is MISSING else f.default


# The official DDIM step rule (pipeline/timesteps.py)


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


def anchor(path: Path, base: Path) -> Path:
    """``path`` made absolute against the folder ``base``, ``..`` folded lexically (symlinks kept)."""
    return Path(os.path.normpath(path if path.is_absolute() else Path(base).absolute() / path))


def local_or_hub(lora: str, base: Path) -> str:
    """A relative ``lora`` that names an existing file or folder under ``base`` becomes that absolute
    path; anything else (absolute paths, Hugging Face repo ids) is kept as written."""
    candidate = base / lora
    return str(candidate) if not Path(lora).is_absolute() and candidate.exists() else lora


def file_or_hub(model: Path, base: Path) -> Path:
    """``model`` anchored at ``base`` as a file (:func:`anchor`), unless it reads as a Hugging Face
    repo id (``org/name``, :func:`~xportrait_cli.weights.registry.looks_like_repo_id`) and names
    nothing under ``base``: then it is kept as written."""
    if not model.is_absolute() and not (base / model).exists() and looks_like_repo_id(model):
        return model
    return anchor(model, base)
