"""One exception family for every known failure.

Each error carries a one-line ``message`` naming the file or value at fault and a ``hint`` naming the
fix. The CLI prints ``message`` and ``hint`` on one line and exits 1 (2 for :class:`UsageError`);
anything that is not an :class:`XPortraitError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class XPortraitError(Exception):
    """Base class: a known failure with a one-line message and a hint naming the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self):
        """Pickle with the hint (Ray and multiprocessing send errors between processes)."""
        return (type(self), (self.message, self.hint))

    def one_line(self) -> str:
        """The message and the hint on one line, as the CLI prints them."""
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class UsageError(XPortraitError):
    """Bad options or a bad manifest: nothing was run (exit 2)."""

    exit_code = 2


class InputError(XPortraitError):
    """An input file is missing, unreadable or of the wrong kind."""


class NoFaceError(InputError):
    """No face was found where one is required (the portrait, or every driving frame)."""


class WeightsMissingError(XPortraitError):
    """Model or landmark weights are not where they were looked for."""


class CheckpointError(XPortraitError):
    """A checkpoint does not match the architecture: keys missing, unexpected or of the wrong shape."""


class DownloadError(XPortraitError):
    """A download failed, was refused, or did not match its checksum."""


class OutOfMemoryPlanError(XPortraitError):
    """The device cannot fit the job even with the smallest batch split and offloading."""


class DiskSpaceError(XPortraitError):
    """The output's file system has, or had, too little free space for the job."""
