"""Options of ``xportrait animate`` by name: every spelling of a name to its field of
:class:`~xportrait_cli.config.AnimateOptions`, and the field's help text, flag, default and check.

Option names are spelled like the fields (``guidance_scale``), with dashes (``guidance-scale``), as
flags (``--guidance-scale``), or with an alias from :data:`ALIASES` (``steps`` for
``num_inference_steps``); :func:`canonical_key` maps them, unknown keys are a
:class:`~xportrait_cli.errors.UsageError` with a suggestion. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from xportrait_cli.config import AnimateOptions
from xportrait_cli.errors import UsageError
from xportrait_cli.option_checks import option_default, option_label

#: Alternative names accepted for options in presets, manifests and flag mappings.
ALIASES: dict[str, str] = {"steps": "num_inference_steps"}

_FIELDS = {f.name: f for f in dataclasses.fields(AnimateOptions)}
#: Every option's canonical name, in declaration order.
OPTION_NAMES: tuple[str, ...] = tuple(_FIELDS)


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
    return option_default(option_field(name))


def coerce_value(name: str, value: Any) -> Any:
    """Option ``name``'s value checked by its field's own check (metadata ``coerce``)."""
    return _FIELDS[name].metadata["coerce"](option_label(_FIELDS[name]), value)


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
