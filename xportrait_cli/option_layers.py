"""Layers of options and their precedence: flags, manifest defaults, presets, built-in defaults.

Precedence (highest first), applied by :func:`resolve_options`:

- ``xportrait animate``: **flags** (and their environment variables, e.g. ``XPORTRAIT_MODEL``)
  > **preset** (``--preset NAME|FILE``) > **built-in defaults** (the field defaults of
  :class:`~xportrait_cli.config.AnimateOptions`, equal to ``presets/default.yaml``: the official
  settings).
- ``xportrait batch``: **job** entry > **manifest defaults** > **preset** > **built-in defaults**.

A layer only overrides the options it sets: ``None`` means "not set" everywhere, so a flag left at
its ``None`` default never masks a preset value. Each value is coerced once, by
:func:`normalize_options` for its layer (so an error names the layer); the merged values then build
the dataclass without a second pass. Relative paths of a preset or manifest are anchored at its
folder by :func:`anchor_paths`, the one rule for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xportrait_cli.config import AnimateOptions
from xportrait_cli.errors import UsageError
from xportrait_cli.option_checks import anchor, file_or_hub, local_or_hub
from xportrait_cli.option_names import OPTION_NAMES, canonical_key, coerce_value, option_field


def canonical_items(mapping: Mapping[Any, Any], source: str, extra: Sequence[str] = ()) -> dict[str, Any]:
    """``mapping`` with canonical keys (:func:`canonical_key`), values untouched.

    Raises :class:`UsageError` naming ``source`` for an unknown key, or for one key given twice
    under two spellings (``steps`` and ``num_inference_steps``).
    """
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in mapping.items():
        name = canonical_key(key, source, extra)
        if name in spelled:
            raise UsageError(
                f"{name!r} given twice in {source} (as {spelled[name]!r} and {key!r})", "keep one of them"
            )
        spelled[name] = str(key)
        out[name] = value
    return out


def normalize_options(mapping: Mapping[str, Any], source: str = "options") -> dict[str, Any]:
    """Canonical names and validated values for the options a layer sets.

    ``mapping`` keys may use underscores, dashes, a leading ``--`` or an alias (:data:`ALIASES`);
    entries whose value is ``None`` are "not set" and dropped. ``source`` names the layer in error
    messages (``"presets/fast.yaml"``, ``"manifest job 3"``). Raises :class:`UsageError` for an
    unknown key (with a difflib suggestion), a key given twice under two spellings, or a bad value.
    """
    out: dict[str, Any] = {}
    for name, value in canonical_items(mapping, source).items():
        if value is None:
            continue
        try:
            out[name] = coerce_value(name, value)
        except UsageError as exc:
            raise UsageError(f"{exc.message} in {source}", exc.hint) from None
    return out


def anchor_paths(options: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Normalised options with their relative paths anchored at ``base`` (the folder of the preset
    or manifest that gave them): fields with metadata ``path="file"`` (``model_config``,
    ``init_video``) and ``"files"`` (``reference``) by :func:`anchor`; ``"local_or_hub"``
    (``lora``) by :func:`local_or_hub` and ``"file_or_hub"`` (``model``) by :func:`file_or_hub`, so
    a repo id stays as written."""
    out = dict(options)
    for name, value in options.items():
        kind = option_field(name).metadata.get("path")
        if kind == "file":
            out[name] = anchor(value, base)
        elif kind == "files":
            out[name] = tuple(anchor(p, base) for p in value)
        elif kind == "local_or_hub":
            out[name] = local_or_hub(value, base)
        elif kind == "file_or_hub":
            out[name] = file_or_hub(value, base)
    return out


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
        from xportrait_cli.presets import load_preset  # presets.py builds on this module

        merged.update(load_preset(preset))
    for i, layer in reversed(list(enumerate(defaults_layers))):
        merged.update(normalize_options(layer, source=f"defaults layer {i}"))
    merged.update(normalize_options(flags or {}, source="flags"))
    return AnimateOptions._from_normalized(merged)


def options_to_dict(options: AnimateOptions, *, output_only: bool = False) -> dict[str, Any]:
    """Options as a plain JSON-able dict with sorted keys (stable across field reordering).

    Paths become strings, ``reference`` a list of strings. With ``output_only=True`` the options
    that change only speed or memory (metadata ``affects_output=False``: ``batch_guidance``,
    ``decode_chunk_size``, ``offload``, ``compile``) are left out, so a job fingerprint survives
    them. ``resolve_options(options_to_dict(o)) == o``.
    """
    out: dict[str, Any] = {}
    for name in sorted(OPTION_NAMES):
        if output_only and not option_field(name).metadata.get("affects_output", True):
            continue
        value = getattr(options, name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[name] = value
    return out
