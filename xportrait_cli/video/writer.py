"""Atomic H.264 video writer with optional audio from a source file (PyAV).

:class:`VideoWriter` encodes uint8 RGB frames as H.264 (libx264, yuv420p, CRF 18) in an MP4 with
``movflags=+faststart``, at an exact :class:`fractions.Fraction` frame rate (``12000/1001`` stays
``12000/1001``). It writes to a hidden temporary name beside the target,
``.<name>.<8 hex>.incomplete.mp4`` (:func:`~xportrait_cli.files.temp_path_for`), and moves it into
place with :func:`os.replace` only when :meth:`VideoWriter.close` succeeds; on any exception
(``KeyboardInterrupt`` included) the temporary file is removed and nothing appears at the output path.

Audio (:mod:`xportrait_cli.video.audio`): with ``audio_source``, the source's first audio stream is
stream-copied when it is AAC or MP3 and transcoded to AAC otherwise (PCM in WAV/MOV, Opus, ...), and
cut to the video's duration (``frames / fps``; a stream copy ends within one audio frame of it). Audio
packets are interleaved with the video as frames arrive. A source without audio gives a video without
an audio track. What a written file holds: :func:`xportrait_cli.video.probe.probe_output`.

Frame size: yuv420p needs an even width and height. The tool's outputs are multiples of 64, so an odd
size is refused with a :class:`ValueError` naming the size rather than silently padded or cropped.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from xportrait_cli.files import temp_path_for
from xportrait_cli.video.audio import AudioCopier

__all__ = ["VideoWriter", "write_video"]

#: libx264 settings for bit-identical files from identical frames (see :class:`VideoWriter`).
X264_DETERMINISTIC: dict[str, str] = {"x264-params": "mbtree=0"}


def _as_fraction(fps: Fraction | int | str) -> Fraction:
    """The frame rate as an exact fraction; floats are refused (12000/1001 must not drift)."""
    if isinstance(fps, float):
        raise TypeError(
            f"fps={fps!r} is a float; pass a fractions.Fraction (e.g. Fraction(12000, 1001)) or an int"
        )
    rate = Fraction(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {rate}")
    return rate


class VideoWriter:
    """Write uint8 RGB frames to an MP4 (H.264 yuv420p CRF 18, faststart), atomically.

    Use as a context manager::

        with VideoWriter("out.mp4", Fraction(12000, 1001), audio_source="driving.mp4") as w:
            w.write(frames)  # (H, W, 3) or (n, H, W, 3) uint8

    Args:
        path: The final output path (``.mp4``). Its folder must exist.
        fps: Exact frame rate, a :class:`~fractions.Fraction` or an int (a float raises ``TypeError``).
        audio_source: Optional file whose first audio stream is copied (AAC/MP3) or transcoded to AAC
            and cut to ``frames / fps``; a file without audio gives no audio track.
        audio_offset: seconds into ``audio_source`` where the video's first frame starts (a driving
            clip read from ``--start``); a non-zero offset transcodes the audio to AAC.
        metadata: container metadata tags (e.g. ``{"comment": ...}``).
        crf: libx264 constant rate factor (default 18, visually lossless).
        preset: libx264 preset (default ``"medium"``).

    Encoding is deterministic: the same frames give the same bytes (one encoder thread, libx264's
    macroblock tree off — its assembly is not reproducible at some frame sizes).

    Raises:
        ValueError: a frame that is not uint8 ``(H, W, 3)``, an odd width/height, a frame whose size
            differs from the first, or closing with no frame written.
        TypeError: a float ``fps``.
        av.FFmpegError: unreadable ``audio_source`` or an encoder failure.

    The file appears at ``path`` only when :meth:`close` succeeds; :meth:`abort` (or leaving the
    ``with`` block by an exception) removes the temporary file and leaves ``path`` untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: Fraction | int,
        *,
        audio_source: str | os.PathLike[str] | None = None,
        audio_offset: Fraction | int = 0,
        metadata: dict[str, str] | None = None,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.crf = int(crf)
        self.preset = preset
        self.frames_written = 0
        self.temp_path = temp_path_for(self.path)
        self._size: tuple[int, int] | None = None
        self._closed = False
        self._container = av.open(
            str(self.temp_path), mode="w", format="mp4", container_options={"movflags": "+faststart"}
        )
        try:
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.pix_fmt = "yuv420p"
            # Deterministic encoding: a resumed job must give the same file as an uninterrupted one.
            # libx264's macroblock-tree rate control (its assembly) writes different bitstreams for
            # identical frames at some sizes (measured: 64², 80², 112², 176x144, 320x240 gave 3-17
            # different files in 12-40 encodes; 96², 128², 512², 640x480, 1280x720 did not), so it is
            # off (+10 % bytes at 512², PSNR unchanged); one thread keeps frame order out of it too.
            self._video.options = {"crf": str(self.crf), "preset": self.preset, **X264_DETERMINISTIC}
            self._video.codec_context.thread_count = 1
            self._container.metadata.update(metadata or {})
            self._audio: AudioCopier | None = None
            if audio_source is not None:
                with av.open(str(audio_source)) as probe_src:
                    has_audio = bool(probe_src.streams.audio)
                if has_audio:
                    self._audio = AudioCopier(Path(audio_source), self._container, Fraction(audio_offset))
        except BaseException:
            self.abort()
            raise

    # -- context manager --------------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ----------------------------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Encode one frame ``(H, W, 3)`` or a batch ``(n, H, W, 3)`` of uint8 RGB.

        Raises:
            ValueError: wrong dtype/shape, odd size, or a size that differs from the first frame.
            RuntimeError: the writer is already closed or aborted.
        """
        if self._closed:
            raise RuntimeError(f"VideoWriter for {self.path} is closed")
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"frames must be (H, W, 3) or (n, H, W, 3) RGB, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {arr.dtype}")
        height, width = int(arr.shape[1]), int(arr.shape[2])
        if self._size is None:
            if width % 2 or height % 2:
                raise ValueError(
                    f"frame size {width}x{height} is odd; H.264 yuv420p needs an even width and height "
                    "(crop or pad the frames by one pixel)"
                )
            self._size = (width, height)
            self._video.width, self._video.height = width, height
        elif (width, height) != self._size:
            raise ValueError(f"frame size {width}x{height} differs from the first frame's {self._size}")
        for image in arr:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.fps
            for packet in self._video.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1
            if self._audio is not None:
                self._audio.feed_until(self.frames_written / self.fps)

    @property
    def duration(self) -> Fraction:
        """Seconds of video written so far: ``frames_written / fps``."""
        return self.frames_written / self.fps

    def close(self) -> Path:
        """Flush the encoders, finish the file and move it to :attr:`path`. Returns the path.

        Raises:
            ValueError: no frame was written (the temporary file is removed).
        """
        if self._closed:
            return self.path
        try:
            if self.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.feed_until(self.duration, final=True)
                self._audio.close()
            self._container.close()
            self._closed = True
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the temporary file; nothing is left at :attr:`path` by this writer."""
        self._closed = True
        if getattr(self, "_audio", None) is not None:
            with contextlib.suppress(Exception):
                self._audio.close()
        with contextlib.suppress(Exception):
            self._container.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.temp_path)


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    fps: Fraction | int,
    *,
    audio_source: str | os.PathLike[str] | None = None,
    crf: int = 18,
) -> Path:
    """Write ``frames`` ``(n, H, W, 3)`` uint8 RGB to ``path`` in one call (see :class:`VideoWriter`)."""
    with VideoWriter(path, fps, audio_source=audio_source, crf=crf) as writer:
        writer.write(frames)
    return writer.path
