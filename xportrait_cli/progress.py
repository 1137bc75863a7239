"""The one place that turns :mod:`xportrait_cli.events` into output.

Four modes, chosen by :func:`choose_mode` from the CLI switches and the terminal:

``rich``
    A Rich live display on stderr (:class:`~xportrait_cli.progress_rich.RichSink`): one bar per
    stage with count, elapsed time and ETA; the ``denoise`` bar counts steps (k/S) and shows the
    timestep and windows per step. Log lines and job results print above the bars.
``plain``
    One line per update on stderr for logs and CI (stderr is not a terminal): a line when a stage
    starts and when it finishes, and at most one progress line per stage per second in between
    (``PLAIN_INTERVAL_S``), each with percent and ETA.
``json`` (``--json``)
    One JSON object per event (:meth:`Event.to_dict`) per line on **stdout**, flushed at once:
    scripts read the event stream as the command's result. Nothing is written to stderr except the
    CLI's own error line.
``quiet`` (``--quiet``)
    Nothing but the final output path on stdout (from :class:`JobDone`, or :class:`JobSkipped`
    when it names an existing output). Errors still come from the CLI's error table.

In a batch (:class:`JobStarted` with ``index`` and ``total``) the ``rich`` display adds a ``jobs``
bar above the stage bars, advanced by each job's result; :func:`batch_table` renders the final
summary of ``xportrait batch``. When jobs run at once (a batch on Ray: a job starts before the
previous one ended), the ``rich`` display shows one bar per running job instead, with its stage and
step, and the ``jobs`` bar counts the jobs done, running and failed; ``plain`` rate-limits each
job's stages separately.

In ``rich`` and ``plain`` the output path of a finished job is also printed alone on stdout (the
result; ``out=$(xportrait animate ...)`` works in every mode but ``json``), and a one-line summary
goes to stderr. :class:`JobFailed` prints ``failed: <message> (<hint>)`` on stderr; the CLI should
therefore not print the same error again for a job whose failure was emitted as an event.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Literal, TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from xportrait_cli.events import (
    Event,
    EventSink,
    FramesWritten,
    JobDone,
    JobFailed,
    JobSkipped,
    JobStarted,
    Log,
    StageFinished,
    StageProgress,
    StageStarted,
    StepProgress,
)

Mode = Literal["rich", "plain", "json", "quiet"]
MODES: tuple[str, ...] = ("rich", "plain", "json", "quiet")
#: Name of the batch's job-count bar in rich mode (kept across jobs).
JOBS_BAR = "jobs"
#: Plain mode prints at most one progress line per stage per this many seconds.
PLAIN_INTERVAL_S = 1.0
#: Log levels shown in rich and plain mode (debug goes to JSON only).
_SHOWN_LEVELS = ("info", "warning", "error")


def choose_mode(*, quiet: bool = False, json_lines: bool = False, console: Console | None = None) -> Mode:
    """The output mode for the CLI switches: ``--json`` wins over ``--quiet``; otherwise ``rich``
    when ``console`` (default: stderr) is a terminal, else ``plain``."""
    if json_lines:
        return "json"
    if quiet:
        return "quiet"
    console = console or Console(stderr=True)
    return "rich" if console.is_terminal else "plain"


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``4m05s``, ``1h02m`` (for summaries and ETAs)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _prefix(event: Event) -> str:
    return f"[{event.job}] " if event.job else ""


class _ResultWriter:
    """Writes results (output paths) on stdout, resolved at write time so test runners capture it."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out

    def line(self, text: str) -> None:
        out = self._out or sys.stdout
        out.write(text + "\n")
        out.flush()


class JsonSink:
    """``json`` mode: ``json.dumps(event.to_dict())`` per line on ``out`` (default stdout)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = _ResultWriter(out)

    def __call__(self, event: Event) -> None:
        self._out.line(json.dumps(event.to_dict(), ensure_ascii=False, default=str))


class QuietSink:
    """``quiet`` mode: only the final output path on ``out`` (default stdout)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = _ResultWriter(out)

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobDone | JobSkipped) and event.output:
            self._out.line(str(event.output))


class _TextSink:
    """Shared lines of the ``plain`` and ``rich`` modes: jobs, logs and results."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = _ResultWriter(out)
        self._open: dict[str | None, str] = {}  # the stage each job is in (FramesWritten's stage)

    def _print(self, text: str) -> None:
        raise NotImplementedError

    def _stage_of(self, event: Event) -> str:
        """Keep track of each job's open stage; the stage ``event`` belongs to: its own, or for
        :class:`FramesWritten` the open one (``decode`` in a job, ``encode`` in a crop)."""
        if isinstance(event, StageStarted):
            self._open[event.job] = event.stage
        elif isinstance(event, StageFinished) and self._open.get(event.job) == event.stage:
            del self._open[event.job]
        if isinstance(event, FramesWritten):
            return self._open.get(event.job, "decode")
        return getattr(event, "stage", "denoise")

    def _job_or_log(self, event: Event) -> bool:
        """Render a job or log event; False for stage events (left to the subclass)."""
        p = _prefix(event)
        if isinstance(event, JobStarted):
            of = f" ({event.index}/{event.total})" if event.index and event.total else ""
            self._print(f"{p}job{of}: {event.output}")
        elif isinstance(event, Log):
            if event.level in _SHOWN_LEVELS:
                label = "" if event.level == "info" else f"{event.level}: "
                self._print(f"{p}{label}{event.message}")
        elif isinstance(event, JobDone):
            self._print(f"{p}done in {format_seconds(event.seconds)}: {event.output}")
            self._out.line(str(event.output))
        elif isinstance(event, JobFailed):
            self._print(f"{p}failed: {event.error}" + (f" ({event.hint})" if event.hint else ""))
        elif isinstance(event, JobSkipped):
            self._print(f"{p}skipped: {event.reason}")
            if event.output:
                self._out.line(str(event.output))
        else:
            return False
        return True


class PlainSink(_TextSink):
    """``plain`` mode: one line per update on ``console`` (stderr), rate-limited per stage.

    Stage start and finish lines, logs and job results always print; progress lines of a stage
    print at most once per ``interval`` seconds of ``clock`` (counted from the stage's start line),
    with the count, percent and an ETA from the stage's mean rate so far.
    """

    def __init__(
        self,
        console: Console,
        out: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = PLAIN_INTERVAL_S,
    ) -> None:
        super().__init__(out)
        self._console = console
        self._clock = clock
        self._interval = interval
        # keyed by (job, stage): the jobs of a batch on Ray run at once
        self._started: dict[tuple[str | None, str], float] = {}
        self._last_line: dict[tuple[str | None, str], float] = {}

    def _print(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)

    def _progress(self, event: Event, stage: str, done: int, total: int | None, detail: str = "") -> None:
        now, key = self._clock(), (event.job, stage)
        last = self._last_line.get(key)
        if last is not None and now - last < self._interval:
            return
        self._last_line[key] = now
        text = f"{_prefix(event)}{stage}: {done}/{total}" if total else f"{_prefix(event)}{stage}: {done}"
        if detail:
            text += f" ({detail})"
        if total:
            text += f" {100 * done / total:.0f}%"
            started = self._started.get(key)
            if started is not None and 0 < done < total:
                eta = (now - started) * (total - done) / done
                text += f" eta {format_seconds(eta)}"
        self._print(text)

    def __call__(self, event: Event) -> None:
        if self._job_or_log(event):
            return
        stage = self._stage_of(event)
        if isinstance(event, StageStarted):
            key = (event.job, event.stage)
            self._started[key] = self._clock()
            self._last_line[key] = self._clock()
            total = f" ({event.total})" if event.total is not None else ""
            self._print(f"{_prefix(event)}{event.stage}: started{total}")
        elif isinstance(event, StageProgress):
            self._progress(event, event.stage, event.done, event.total)
        elif isinstance(event, StepProgress):
            detail = f"t={event.timestep}, {event.windows} windows"
            self._progress(event, "denoise", event.step, event.total_steps, detail)
        elif isinstance(event, FramesWritten):
            self._progress(event, stage, event.count, event.total)
        elif isinstance(event, StageFinished):
            self._last_line.pop((event.job, event.stage), None)
            self._print(f"{_prefix(event)}{event.stage}: done in {format_seconds(event.seconds)}")


def batch_table(summary) -> Table:
    """The summary table of ``xportrait batch`` (a :class:`~xportrait_cli.jobs.batch.BatchSummary`):
    one row per job (status, time, error or note), then the counts and the total time."""
    styles = {"done": "green", "skipped": "cyan", "failed": "bold red", "not_run": "yellow"}
    table = Table(title=None, show_lines=False, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("job", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("note", overflow="fold")
    for job in summary.jobs:
        note = job.error or job.reason or ""
        if job.resumed_from is not None:
            note = f"resumed from step {job.resumed_from}" + (f"; {note}" if note else "")
        status = job.status.replace("_", " ")
        table.add_row(  # Text, not markup: labels and errors may hold brackets
            str(job.index),
            Text(job.label),
            Text(status, style=styles.get(job.status, "")),
            format_seconds(job.seconds) if job.status in ("done", "failed") else "-",
            Text(note),
            end_section=job is summary.jobs[-1],
        )
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in summary.counts.items() if n)
    if summary.interrupted:
        counts += ", interrupted"
    if summary.shard:
        counts += f" (shard {summary.shard})"
    table.add_row("", "total", "", format_seconds(summary.seconds), Text(counts))
    return table


@contextlib.contextmanager
def make_sink(
    mode: Mode,
    console: Console | None = None,
    *,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[EventSink]:
    """A context manager yielding the :data:`EventSink` that renders events in ``mode``.

    ``console`` receives progress (default: a new ``Console(stderr=True)``); ``out`` receives
    results (default: ``sys.stdout`` at write time). ``clock`` drives plain-mode rate limiting.
    Leaving the context stops the live display (rich mode) even when the body raises.
    Raises ``ValueError`` for a mode not in :data:`MODES`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; expected one of {MODES}")
    if mode == "json":
        yield JsonSink(out)
    elif mode == "quiet":
        yield QuietSink(out)
    else:
        console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        if mode == "plain":
            yield PlainSink(console, out, clock=clock)
        else:
            from xportrait_cli.progress_rich import RichSink

            with RichSink(console, out) as sink:
                yield sink


@contextlib.contextmanager
def download_bars(console: Console) -> Iterator[Callable[[str, int, int | None], None]]:
    """A transient Rich display on ``console`` for ``download-weights``: yields the
    ``progress(label, done, total)`` callback of :mod:`xportrait_cli.weights.download`, one bar per
    label with bytes done and ETA; the bars vanish when the context ends."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def progress(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=total)
        bars.update(tasks[label], completed=done, total=total)

    with bars:
        yield progress


__all__ = [
    "MODES",
    "JOBS_BAR",
    "PLAIN_INTERVAL_S",
    "JsonSink",
    "Mode",
    "PlainSink",
    "QuietSink",
    "batch_table",
    "choose_mode",
    "download_bars",
    "format_seconds",
    "make_sink",
]
