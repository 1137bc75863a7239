"""The ``rich`` mode of :mod:`xportrait_cli.progress`: a live display with one bar per stage (one
per running job when a batch's jobs run at once, on Ray)."""

from __future__ import annotations

from typing import TextIO

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

from xportrait_cli.events import (
    Event,
    FramesWritten,
    JobDone,
    JobFailed,
    JobSkipped,
    JobStarted,
    StageFinished,
    StageProgress,
    StageStarted,
    StepProgress,
)
from xportrait_cli.progress import JOBS_BAR, _TextSink


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
