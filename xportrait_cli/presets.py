"""Presets: named YAML files of options (``presets/fast.yaml``) or any YAML file given by path.

A preset is a flat YAML mapping of options, keys spelled as in
:func:`xportrait_cli.option_layers.normalize_options` (``steps``, ``guidance-scale`` …), plus an optional
``description``. ``presets/default.yaml`` holds the official settings (official
``scripts/test_xportrait.sh``), equal to the built-in defaults of
:class:`~xportrait_cli.config.AnimateOptions`. Relative paths in a preset are taken relative to the
preset file's folder (:func:`xportrait_cli.option_layers.anchor_paths`).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

import xportrait_cli
from xportrait_cli.errors import UsageError
from xportrait_cli.option_layers import anchor_paths, normalize_options


def _presets_dir() -> Path:
    """The top-level ``presets/`` of a source checkout (editable install), else the copy a wheel
    installs under ``<prefix>/share/xportrait/presets`` (pyproject ``data-files``)."""
    checkout = Path(xportrait_cli.__file__).resolve().parent.parent / "presets"
    installed = Path(sys.prefix) / "share" / "xportrait" / "presets"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


#: The top-level ``presets`` folder of the product layout (beside the package, not inside it).
PRESETS_DIR = _presets_dir()
#: Keys a preset file may hold besides options (ignored when resolving options).
PRESET_META_KEYS = frozenset({"description"})


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
    """The file of a preset name (in :data:`PRESETS_DIR`) or path; UsageError with a suggestion."""
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

    Returns the normalised, validated options it sets, relative paths (``model``,
    ``model_config``, ``init_video``, ``reference``, a local ``lora``) anchored at the preset
    file's folder. Raises :class:`UsageError` for an unknown preset (with a suggestion), a missing
    or unreadable file, invalid YAML, a non-mapping document, an unknown key or a bad value.
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
    return anchor_paths(options, path.resolve().parent)


__all__ = ["PRESETS_DIR", "PRESET_META_KEYS", "list_presets", "load_preset"]
