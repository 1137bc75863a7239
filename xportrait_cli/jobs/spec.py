"""What one job is: input paths, output path and resolved options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xportrait_cli.config import AnimateOptions

WORK_SUFFIX = ".xportrait"


def default_output(portrait: Path, driving: Path, folder: Path | None = None) -> Path:
    """``<portrait-stem>--<driving-stem>.mp4`` in ``folder`` (default: the current directory)."""
    return (folder or Path.cwd()) / f"{Path(portrait).stem}--{Path(driving).stem}.mp4"


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
        return self.output.with_name(self.output.name + WORK_SUFFIX)

    @property
    def lock_path(self) -> Path:
        return self.output.with_name(self.output.name + WORK_SUFFIX + ".lock")

    @property
    def label(self) -> str:
        return self.name or self.output.name
