"""Checks a job passes before any landmark or model work: inputs that open, room on the disk.

:func:`check_inputs` opens both inputs (the portrait decodes, the driving video has a video stream
and a frame, sizes are sane), so a bad file fails in about a second with one line.
:func:`check_disk_space` estimates what the job will write beside its output (frame store, crops,
checkpoints, output) and refuses when the file system has less free, as ``huggingface_hub`` checks
the free space before a download; :func:`disk_full_error` turns an ``ENOSPC`` met anyway into one
line naming the path and the space needed.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

from xportrait_cli.errors import DiskSpaceError, InputError
from xportrait_cli.jobs.inputs import input_problem
from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.video.reader import VideoInfo, probe_video, select_frames

#: Smallest and largest accepted side of an input image or video frame, in pixels.
MIN_SIDE, MAX_SIDE = 16, 16384
#: H.264 output at crf 18 as a share of its raw RGB frames, rounded up (measured 2-6 % at 64-512 px).
_VIDEO_RATIO = 0.15
#: Audio kept in the output, bytes per second at most (320 kbit/s).
_AUDIO_RATE = 40_000
#: Slack for file-system blocks, JSON and headers.
_SLACK = 64 * 1024


@dataclass(frozen=True)
class Inputs:
    """What :func:`check_inputs` found: ``portrait_size`` ``(width, height)`` pixels and the
    driving video's :class:`~xportrait_cli.video.reader.VideoInfo`."""

    portrait_size: tuple[int, int]
    driving: VideoInfo


def _check_side(path: Path, label: str, width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise InputError(
            f"{path}: {label} is {width}x{height} pixels",
            f"pass one with sides from {MIN_SIDE} to {MAX_SIDE} pixels",
        )


def check_inputs(spec: JobSpec) -> Inputs:
    """Open every input of ``spec`` before any landmark or model work (about a second).

    The portrait and the reference portraits must decode (:func:`xportrait_cli.image.load_image`),
    the driving video must have a video stream with at least one frame
    (:func:`xportrait_cli.video.reader.probe_video`; so must ``--init-video``), every side must be
    16–16384 px and the output folder must exist. Raises
    :class:`~xportrait_cli.errors.InputError` with one line naming the file.
    """
    from xportrait_cli.image import load_image

    if (problem := input_problem(spec, "check the path")) is not None:
        raise problem
    if not spec.output.parent.is_dir():
        raise InputError(
            f"{spec.output.parent}: output folder does not exist", "create it or pass another -o"
        )
    sizes = {}
    for label, path in (
        ("portrait", spec.portrait),
        *(("reference portrait", r) for r in spec.options.reference),
    ):
        height, width = load_image(path).shape[:2]
        _check_side(path, label, width, height)
        sizes[path] = (width, height)
    info = probe_video(spec.driving)
    _check_side(spec.driving, "driving video", info.width, info.height)
    if spec.options.init_video is not None:
        probe_video(spec.options.init_video)
    return Inputs(sizes[spec.portrait], info)


def estimate_bytes(spec: JobSpec, inputs: Inputs) -> int:
    """Bytes the job writes beside its output at most, by the formulas below (S = ``--size``, n
    selected frames): frame store ``n·(3S² + 600)``; square crops (``--crop``) ``S²·3·(1 + 0.15 n)``;
    two latents checkpoints during a rename ``2·n·4·(S/8)²·4``; the output (and the comparison
    video, three panels) ``0.15`` of their raw frames, at the portrait's size with ``--paste-back``,
    plus the driving video's audio at up to 320 kbit/s. Raises UsageError for bad frame options."""
    opts, info = spec.options, inputs.driving
    n = len(select_frames(info.num_frames, opts.start, opts.frames, opts.stride))
    s = opts.size
    store = n * (3 * s * s + 600)
    crops = int(s * s * 3 * (1 + _VIDEO_RATIO * n)) if opts.crop != "off" else 0
    checkpoints = 2 * n * 4 * (s // 8) ** 2 * 4
    width, height = inputs.portrait_size if opts.paste_back else (s, s)
    output = int(n * 3 * width * height * _VIDEO_RATIO)
    if opts.comparison:
        output += int(n * 9 * s * s * _VIDEO_RATIO)
    audio = int(n / info.fps * opts.stride * _AUDIO_RATE) if info.has_audio else 0
    return store + crops + checkpoints + output + audio + _SLACK


def _size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def check_disk_space(spec: JobSpec, inputs: Inputs) -> int:
    """Refuse a job whose file system lacks the space :func:`estimate_bytes` gives (what the work
    folder already holds counts as written). Returns the estimate in bytes. Raises
    :class:`~xportrait_cli.errors.DiskSpaceError` (exit 1) naming the folder, the space needed and
    the space free."""
    needed = estimate_bytes(spec, inputs)
    folder = spec.output.parent
    free = shutil.disk_usage(folder).free + _size_of(spec.work_dir)
    if free < needed:
        raise DiskSpaceError(
            f"not enough free space in {folder}: the job writes about {_mb(needed)}, {_mb(free)} free",
            "free some space, or pass -o on a larger disk",
        )
    return needed


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk: ``OSError`` with
    ``ENOSPC``, or a library error carrying its text (safetensors' ``SafetensorError``, FFmpeg)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(exc: BaseException, spec: JobSpec, needed: int, resumable: bool) -> DiskSpaceError:
    """The one-line error for a disk that filled up while the job wrote ``exc``'s file."""
    path = getattr(exc, "filename", None) or spec.work_dir
    again = "resumable: run the same command again" if resumable else "then run the same command again"
    return DiskSpaceError(
        f"no space left on the device writing {path}: the job needs about {_mb(needed)} free in "
        f"{spec.output.parent}",
        f"free some space; {again}",
    )
