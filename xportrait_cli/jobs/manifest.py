"""Job manifests for ``xportrait batch``: parse and validate every job before anything runs.

Formats (chosen from the file name, else sniffed from the text; ``-`` reads stdin):

- **YAML** (``.yaml``, ``.yml``, ``.json``): a list of jobs, or a mapping with ``jobs:`` (the list)
  and an optional ``defaults:`` mapping applied to every job.
- **CSV** (``.csv``): a header row naming the keys, then one job per row; an empty cell is "not
  set"; several ``reference`` portraits are separated by ``;``.
- **JSONL** (``.jsonl``, ``.ndjson``): one JSON object per line; blank lines are ignored.

Each job has ``portrait`` and ``driving`` (required), ``output`` and ``name`` (optional) and any
option of ``xportrait animate`` spelled with underscores or dashes (``model_config`` or
``model-config``, alias ``steps``), ``reference`` included. ``defaults:`` may hold options and a
shared ``portrait`` or ``driving``. Precedence, highest first: job > manifest defaults > preset >
built-in defaults (:func:`xportrait_cli.option_layers.resolve_options`).

Paths: relative input paths (``portrait``, ``driving``, ``reference``, ``model``,
``model_config``, ``init_video``, and ``lora`` when such a file exists; otherwise ``lora`` is a
Hugging Face repo id) are relative to the manifest's folder (stdin: the current directory). A relative
``output`` is relative to ``output_dir`` when given, else to the manifest's folder. The default
output is ``<portrait-stem>--<driving-stem>.mp4`` in ``output_dir`` or beside the manifest.

Validation, before any GPU work: structural problems (unparseable text, unknown keys — with a
suggestion —, bad values, missing ``portrait``/``driving``, two jobs writing one output) raise one
:class:`ManifestError` (a :class:`~xportrait_cli.errors.UsageError`, exit 2) listing every problem
with its place (``manifest.yaml job 3``, ``jobs.csv row 4``, ``jobs.jsonl line 2``). A missing or
unreadable input file only marks that job: :attr:`ManifestJob.error` holds an
:class:`~xportrait_cli.errors.InputError` and the batch runs the others.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from xportrait_cli.errors import InputError, UsageError
from xportrait_cli.jobs.inputs import input_problem
from xportrait_cli.jobs.spec import JobSpec, output_path
from xportrait_cli.option_checks import anchor
from xportrait_cli.option_layers import anchor_paths, canonical_items, normalize_options, resolve_options
from xportrait_cli.presets import load_preset

#: Keys of a job entry that are not options.
JOB_KEYS: tuple[str, ...] = ("portrait", "driving", "output", "name")
#: Keys of ``defaults:`` that are not options.
DEFAULT_KEYS: tuple[str, ...] = ("portrait", "driving")
#: Manifest formats and the file suffixes that select them.
FORMATS: dict[str, tuple[str, ...]] = {
    "yaml": (".yaml", ".yml", ".json"),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".ndjson"),
}
#: Separator of several ``reference`` paths in one CSV cell.
CSV_LIST_SEPARATOR = ";"


class ManifestError(UsageError):
    """The manifest cannot be run as written (exit 2): ``problems`` lists every one found."""

    def __init__(self, problems: list[UsageError]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0].message, problems[0].hint)
        else:
            listed = "; ".join(p.one_line() for p in problems)
            super().__init__(f"{len(problems)} problems in the manifest: {listed}", "fix them and run again")

    def __reduce__(self):
        return (type(self), (self.problems,))


@dataclass(frozen=True)
class ManifestJob:
    """One validated job of a manifest.

    Attributes:
        index: 1-based position in the manifest (``--shard`` splits by it).
        where: its place for messages (``manifest.yaml job 3``, ``jobs.csv row 4``).
        spec: the job, options resolved, paths absolute.
        error: set when an input file is missing or unreadable: the job is reported failed and the
            others run.
    """

    index: int
    where: str
    spec: JobSpec
    error: InputError | None = None


@dataclass(frozen=True)
class _Entry:
    where: str
    data: Any


def load_manifest(
    source: str | os.PathLike,
    *,
    preset: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    fmt: str | None = None,
    stdin: TextIO | None = None,
) -> list[ManifestJob]:
    """Read and validate a manifest file (or ``"-"``: ``stdin``, default ``sys.stdin``).

    ``fmt`` is ``"yaml"``, ``"csv"`` or ``"jsonl"``; by default it comes from the file's suffix, or
    is sniffed from the text. Raises :class:`ManifestError` (exit 2) for structural problems and
    for a manifest that cannot be read; see the module docstring for everything else.
    """
    if os.fspath(source) == "-":
        text = (stdin or sys.stdin).read()
        return parse_manifest(text, name="<stdin>", base_dir=Path.cwd(), fmt=fmt, preset=preset,
                              output_dir=output_dir)  # fmt: skip
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError([UsageError(f"manifest {path} not found", "check the path")]) from None
    except IsADirectoryError:
        raise ManifestError([UsageError(f"manifest {path} is a folder", "pass a manifest file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ManifestError([UsageError(f"cannot read manifest {path}: {why}", "check the file")]) from None
    if fmt is None:
        fmt = next((f for f, suffixes in FORMATS.items() if path.suffix.lower() in suffixes), None)
    return parse_manifest(
        text, name=str(source), base_dir=path.absolute().parent, fmt=fmt, preset=preset, output_dir=output_dir
    )


def parse_manifest(
    text: str,
    *,
    name: str,
    base_dir: Path,
    fmt: str | None = None,
    preset: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> list[ManifestJob]:
    """Parse and validate manifest ``text``; ``name`` labels it in messages, ``base_dir`` anchors
    relative paths. Same rules and errors as :func:`load_manifest`."""
    fmt = fmt or sniff_format(text)
    if fmt not in FORMATS:
        raise ManifestError(
            [UsageError(f"unknown manifest format {fmt!r}", f"use one of {', '.join(FORMATS)}")]
        )
    if fmt == "yaml":
        defaults, entries = _read_yaml(text, name)
    elif fmt == "csv":
        defaults, entries = {}, _read_csv(text, name)
    else:
        defaults, entries = {}, _read_jsonl(text, name)
    if not entries:
        raise ManifestError([UsageError(f"{name} has no jobs", "add at least one job")])

    problems: list[UsageError] = []
    preset_options: dict[str, Any] = {}
    if preset is not None:
        try:
            preset_options = load_preset(preset)
        except UsageError as exc:
            problems.append(exc)
    out_dir = Path(output_dir).expanduser().absolute() if output_dir is not None else None
    try:
        default_fields, default_options = _split(defaults, f"{name} defaults", base_dir, DEFAULT_KEYS)
    except UsageError as exc:
        problems.append(exc)
        default_fields, default_options = {}, {}

    jobs: list[ManifestJob] = []
    outputs: dict[str, str] = {}
    for index, entry in enumerate(entries, 1):
        try:
            job = _build_job(
                index, entry, base_dir, out_dir, default_fields, [default_options, preset_options]
            )
        except UsageError as exc:
            problems.append(exc)
            continue
        key = os.path.normcase(str(job.spec.output.resolve()))
        if key in outputs:
            problems.append(
                UsageError(
                    f"{entry.where} writes the same output as {outputs[key]}: {job.spec.output}",
                    "give one of them another output",
                )
            )
        outputs.setdefault(key, entry.where)
        jobs.append(job)
    if problems:
        raise ManifestError(problems)
    return jobs


def sniff_format(text: str) -> str:
    """Guess ``"jsonl"``, ``"csv"`` or ``"yaml"`` from the first meaningful line of ``text``."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("{"):
            return "jsonl"
        if stripped.startswith(("-", "[")) or ":" in stripped:
            return "yaml"
        if "," in stripped:
            return "csv"
        return "yaml"
    return "yaml"


# --------------------------------------------------------------------------------------------------
# Readers: text -> (defaults, [entries with their place])
# --------------------------------------------------------------------------------------------------


def _structural(message: str, hint: str = "") -> ManifestError:
    return ManifestError([UsageError(message, hint)])


def _read_yaml(text: str, name: str) -> tuple[Mapping[str, Any], list[_Entry]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise _structural(f"invalid YAML in {name}{where}: {problem}", "fix the file's syntax") from None
    shape = "a list of jobs, or a mapping with 'jobs:' (and optional 'defaults:')"
    defaults: Any = {}
    if isinstance(data, list):
        jobs, jobs_node = data, root
    elif isinstance(data, dict):
        unknown = [k for k in data if k not in ("defaults", "jobs")]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), ["defaults", "jobs"], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the manifest must be {shape}"
            raise _structural(f"unknown top-level key {unknown[0]!r} in {name}", hint)
        if "jobs" not in data:
            raise _structural(f"{name} has no 'jobs:' list", f"the manifest must be {shape}")
        jobs = data["jobs"]
        defaults = data.get("defaults") or {}
        if not isinstance(jobs, list):
            raise _structural(f"'jobs' in {name} must be a list of jobs", f"the manifest must be {shape}")
        if not isinstance(defaults, dict):
            raise _structural(f"'defaults' in {name} must be a mapping of option: value")
        jobs_node = next((v for k, v in root.value if k.value == "jobs"), None)
    elif data is None:
        return {}, []
    else:
        raise _structural(f"{name} must be {shape}")
    lines = [item.start_mark.line + 1 for item in jobs_node.value] if jobs_node is not None else []
    entries = []
    for i, job in enumerate(jobs, 1):
        line = f", line {lines[i - 1]}" if i <= len(lines) else ""
        entries.append(_Entry(f"{name} job {i}{line}", job))
    return defaults, entries


def _read_csv(text: str, name: str) -> list[_Entry]:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    try:
        header = reader.fieldnames
        if not header:
            return []
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise _structural(f"column {dup!r} appears twice in the header of {name}")
        entries = []
        for row in reader:
            where = f"{name} row {reader.line_num}"
            if None in row:
                raise _structural(
                    f"{where} has more cells than the header", "quote cells that contain commas"
                )
            cells = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
            cells = {k: v for k, v in cells.items() if v not in ("", None)}
            if not cells:
                continue
            if isinstance(cells.get("reference"), str):
                cells["reference"] = [
                    p.strip() for p in cells["reference"].split(CSV_LIST_SEPARATOR) if p.strip()
                ]
            entries.append(_Entry(where, cells))
    except csv.Error as exc:
        raise _structural(f"invalid CSV in {name} at line {reader.line_num}: {exc}") from None
    return entries


def _read_jsonl(text: str, name: str) -> list[_Entry]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _structural(
                f"invalid JSON in {name} line {number}: {exc.msg}", "one JSON object per line"
            ) from None
        entries.append(_Entry(f"{name} line {number}", data))
    return entries


# --------------------------------------------------------------------------------------------------
# One entry -> ManifestJob
# --------------------------------------------------------------------------------------------------


def _path_value(value: Any, key: str, where: str) -> Path:
    if isinstance(value, str | os.PathLike) and str(value).strip():
        return Path(str(value).strip()).expanduser()
    raise UsageError(f"invalid {key} {value!r} in {where}: must be a file path")


def _split(
    data: Any, where: str, base: Path, allowed: tuple[str, ...]
) -> tuple[dict[str, Path | str], dict[str, Any]]:
    """``data`` -> (job fields, normalised options) with relative option paths anchored at ``base``."""
    if not isinstance(data, Mapping):
        raise UsageError(
            f"{where} must be a mapping of key: value, got {type(data).__name__}",
            "each job needs at least portrait: and driving:",
        )
    fields: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, value in canonical_items(data, where, allowed).items():
        if name not in allowed:
            options[name] = value
        elif value is not None:
            fields[name] = value if name == "name" else _path_value(value, name, where)
    return fields, anchor_paths(normalize_options(options, source=where), base)


def _build_job(
    index: int,
    entry: _Entry,
    base: Path,
    output_dir: Path | None,
    default_fields: Mapping[str, Any],
    lower_layers: list[dict[str, Any]],
) -> ManifestJob:
    where = entry.where
    fields, options = _split(entry.data, where, base, JOB_KEYS)
    fields = {**default_fields, **fields}
    for required in ("portrait", "driving"):
        if required not in fields:
            raise UsageError(f"{where} has no {required!r}", f"add {required}: PATH to the job")
    try:
        resolved = resolve_options(options, preset=None, defaults_layers=lower_layers)
    except UsageError as exc:
        message = exc.message if where in exc.message else f"{exc.message} in {where}"
        raise UsageError(message, exc.hint) from None
    portrait = anchor(fields["portrait"], base).absolute()
    driving = anchor(fields["driving"], base).absolute()
    folder = output_dir or base
    try:
        given = anchor(fields["output"], folder) if "output" in fields else None
        output = output_path(given, portrait, driving, folder)
    except UsageError as exc:
        raise UsageError(f"{exc.message} in {where}", exc.hint) from None
    name = str(fields["name"]).strip() if fields.get("name") not in (None, "") else None
    spec = JobSpec(portrait, driving, output.absolute(), resolved, name)
    return ManifestJob(index, where, spec, input_problem(spec, f"check the path in {where}"))


__all__ = [
    "CSV_LIST_SEPARATOR",
    "FORMATS",
    "JOB_KEYS",
    "ManifestError",
    "ManifestJob",
    "load_manifest",
    "parse_manifest",
    "sniff_format",
]
