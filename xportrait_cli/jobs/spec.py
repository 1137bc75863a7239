"""What one job is: input paths, output path and resolved options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xportrait_cli.config import AnimateOptions
from xportrait_cli.errors import UsageError
from xportrait_cli.events import EventSink, Log
from xportrait_cli.jobs.workdir import lock_path_for, work_dir_for

if TYPE_CHECKING:  # spec.py loads no torch (manifest validation imports it)
    import torch

#: Output suffixes the video writer produces (an MP4 container, H.264 and AAC).
OUTPUT_SUFFIXES = (".mp4", ".m4v")


def default_output(portrait: Path, driving: Path, folder: Path | None = None) -> Path:
    """``<portrait-stem>--<driving-stem>.mp4`` in ``folder`` (default: the current directory)."""
    return (folder or Path.cwd()) / f"{Path(portrait).stem}--{Path(driving).stem}.mp4"


def output_path(output: Path | None, portrait: Path, driving: Path, folder: Path | None = None) -> Path:
    """The absolute output file of a job, checked before any work.

    ``output``: ``None`` → :func:`default_output` in ``folder``; an existing folder (LivePortrait's
    ``-o DIR``) → :func:`default_output` inside it; otherwise a file whose suffix is one of
    :data:`OUTPUT_SUFFIXES`. Raises :class:`~xportrait_cli.errors.UsageError` (exit 2) for another
    suffix (``-o out.txt`` would otherwise be an MP4 named ``.txt``).
    """
    if output is None or output.is_dir():
        return default_output(portrait, driving, output or folder).absolute()
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"output {output}: the writer makes MP4 files, not {output.suffix or 'files without a suffix'}",
            f"name the output with {' or '.join(OUTPUT_SUFFIXES)}, or pass an existing folder",
        )
    return output.absolute()


@dataclass(frozen=True)
class JobSpec:
    """One animate job.

    Attributes:
        portrait: the portrait image; driving: the driving video (or a single image).
        output: the final MP4 path; its working directory is ``<output>.xportrait/`` beside it.
        options: every resolved option (:class:`~xportrait_cli.config.AnimateOptions`).
        name: a label for progress and summaries (default: the output's file name).
    """

    portrait: Path
    driving: Path
    output: Path
    options: AnimateOptions
    name: str | None = None

    @property
    def work_dir(self) -> Path:
        """``<output>.xportrait/`` (:mod:`xportrait_cli.jobs.workdir` holds its layout)."""
        return work_dir_for(self.output)

    @property
    def lock_path(self) -> Path:
        """``<output>.xportrait.lock``: the per-job file lock."""
        return lock_path_for(self.output)

    @property
    def label(self) -> str:
        return self.name or self.output.name


@dataclass
class JobRun:
    """A job being run by :func:`~xportrait_cli.jobs.runner.run_job`, inside its lock with its work
    dir open: the spec, its fingerprint ``digest``, the working directory, the event sink, the
    resolved torch ``device`` and ``dtype``, and the test hook ``after_step(steps_done)``. Each step
    of the job (:mod:`.prepare`, :mod:`.denoise`, the runner's decode) takes it."""

    spec: JobSpec
    digest: str
    work: Path
    events: EventSink
    device: torch.device
    dtype: torch.dtype
    after_step: Callable[[int], None] | None = None

    @property
    def job(self) -> str:
        return self.spec.label

    def log(self, level: str, message: str) -> None:
        self.events(Log(level, message, job=self.job))
