"""What a written MP4 holds (:func:`probe_output`): frame count, exact frame rate, size, codecs and
durations, as the tests and the benchmarks check an output (PyAV). Reading an input video without
decoding it is :func:`xportrait_cli.video.reader.probe_video`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

__all__ = ["StreamInfo", "probe_output"]


@dataclass(frozen=True)
class StreamInfo:
    """What :func:`probe_output` reports about a written file.

    Attributes:
        frames: number of decoded video frames.
        fps: the video stream's ``average_rate`` (exact fraction).
        width, height: frame size in pixels.
        video_codec, pix_fmt: e.g. ``"h264"``, ``"yuv420p"``.
        video_duration: seconds, from the video stream's duration.
        audio_codec: ``None`` when there is no audio track.
        audio_duration: seconds of the audio track (``None`` without audio).
        duration: container duration in seconds.
    """

    frames: int
    fps: Fraction
    width: int
    height: int
    video_codec: str
    pix_fmt: str
    video_duration: float
    audio_codec: str | None
    audio_duration: float | None
    duration: float


def probe_output(path: str | os.PathLike[str], *, count_frames: bool = True) -> StreamInfo:
    """Describe an MP4 written by :class:`VideoWriter` (decodes the video when ``count_frames``)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = video.frames
        if count_frames:
            frames = sum(1 for _ in container.decode(video))
        audio = container.streams.audio[0] if container.streams.audio else None

        def seconds(stream: Any) -> float:
            return float(stream.duration * stream.time_base) if stream.duration is not None else 0.0

        return StreamInfo(
            frames=frames,
            fps=Fraction(video.average_rate),
            width=video.codec_context.width,
            height=video.codec_context.height,
            video_codec=video.codec_context.name,
            pix_fmt=video.codec_context.pix_fmt,
            video_duration=seconds(video),
            audio_codec=audio.codec_context.name if audio is not None else None,
            audio_duration=seconds(audio) if audio is not None else None,
            duration=(container.duration or 0) / av.time_base,
        )
