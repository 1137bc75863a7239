"""The one place that turns :mod:`xportrait_cli.events` into output.

Four modes, chosen by :func:`choose_mode` from the CLI switches and the terminal:

``rich``
    A Rich live display on stderr: one bar per stage with count, elapsed time and ETA; the
    ``denoise`` bar counts steps (k/S) and shows the timestep and windows per step. Log lines and
    job results print above the bars.
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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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


class RichSink(_TextSink):
    """``rich`` mode: a live :class:`rich.progress.Progress` on ``console``, one task per stage.

    Use as a context manager (:func:`make_sink` does): entering starts the live display, leaving
    stops it and leaves the last state of the bars on screen. A new :class:`JobStarted` clears the
    bars of the previous job; a stage that starts again resets its bar. Once a batch's job starts
    while another is running (a batch on Ray), the display is *concurrent*: one bar per running job
    (its stage in the info column), removed when the job ends, and the ``jobs`` bar counts the
    jobs done, running and failed.
    """

    def __init__(self, console: Console, out: TextIO | None = None) -> None:
        super().__init__(out)
        self._console = console
        self.progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._running: set[str] = set()
        self._ended: dict[str, int] = {"done": 0, "skipped": 0, "failed": 0}
        self._concurrent = False

    def __enter__(self) -> RichSink:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def _print(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True, emoji=False)

    def _task(self, stage: str, total: int | None = None) -> TaskID:
        task = self._tasks.get(stage)
        if task is None:
            task = self.progress.add_task(stage, total=total, info="")
            self._tasks[stage] = task
        return task

    def _clear(self) -> None:
        """Remove the stage bars of the previous job (a batch's ``jobs`` bar stays)."""
        for stage in [s for s in self._tasks if s != JOBS_BAR]:
            self.progress.remove_task(self._tasks.pop(stage))

    def _jobs_bar(self, event: Event) -> None:
        """Batch progress: the ``jobs`` bar counts finished jobs and names the current one (counts
        the jobs done, running and failed when they run at once)."""
        ended = isinstance(event, JobDone | JobFailed | JobSkipped)
        if isinstance(event, JobStarted) and event.job:
            if not self._concurrent and self._running - {event.job}:
                self._concurrent = True
                self._clear()
            self._running.add(event.job)
        elif ended and event.job in self._running:
            self._running.discard(event.job)
            self._ended[{JobDone: "done", JobFailed: "failed"}.get(type(event), "skipped")] += 1
            if self._concurrent and event.job in self._tasks:
                self.progress.remove_task(self._tasks.pop(event.job))
        if isinstance(event, JobStarted) and event.total:
            task = self._task(JOBS_BAR, event.total)
            name = event.job or event.output
            self.progress.update(task, total=event.total, info=f"{event.index}/{event.total}: {name}")
            self.progress.start_task(task)
        elif ended and JOBS_BAR in self._tasks:
            self.progress.advance(self._tasks[JOBS_BAR])
        if self._concurrent and JOBS_BAR in self._tasks:
            counts = {"done": self._ended["done"], "running": len(self._running), **self._ended}
            info = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what != "skipped")
            self.progress.update(self._tasks[JOBS_BAR], info=info)

    def _bar(self, event: Event, stage: str) -> tuple[str, str]:
        """(bar, info prefix) for an event of ``stage``: the stage's bar, or the job's when concurrent."""
        if self._concurrent and event.job:
            return event.job, f"{stage} "
        return stage, ""

    def __call__(self, event: Event) -> None:
        p = self.progress
        self._jobs_bar(event)
        if isinstance(event, JobStarted) and not self._concurrent:
            self._clear()
        if self._job_or_log(event):
            return
        stage = self._stage_of(event)
        if isinstance(event, StageStarted):
            bar, info = self._bar(event, event.stage)
            if bar in self._tasks:
                p.reset(self._tasks[bar], total=event.total, info=info)
            else:
                self._task(bar, event.total)
                p.update(self._tasks[bar], info=info)
            p.start_task(self._tasks[bar])
        elif isinstance(event, StageProgress):
            p.update(self._task(self._bar(event, event.stage)[0]), completed=event.done, total=event.total)
        elif isinstance(event, StepProgress):
            bar, info = self._bar(event, "denoise")
            info += f"t={event.timestep:<4} {event.windows} windows/step"
            p.update(self._task(bar), completed=event.step, total=event.total_steps, info=info)
        elif isinstance(event, FramesWritten):
            p.update(self._task(self._bar(event, stage)[0]), completed=event.count, total=event.total)
        elif isinstance(event, StageFinished):
            task = self._task(self._bar(event, event.stage)[0])
            total = next(t.total for t in p.tasks if t.id == task)
            if total is None:
                p.update(task, total=1, completed=1)
            else:
                p.update(task, completed=total)
            p.stop_task(task)


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
            with RichSink(console, out) as sink:
                yield sink


__all__ = [
    "MODES",
    "JOBS_BAR",
    "PLAIN_INTERVAL_S",
    "JsonSink",
    "Mode",
    "PlainSink",
    "QuietSink",
    "RichSink",
    "batch_table",
    "choose_mode",
    "format_seconds",
    "make_sink",
]
