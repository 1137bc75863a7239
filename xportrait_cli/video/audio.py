"""Audio for :class:`~xportrait_cli.video.writer.VideoWriter`: the driving clip's first audio stream,
stream-copied into the MP4 when it is AAC or MP3, transcoded to AAC otherwise, and cut to the video's
duration (PyAV)."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["AudioCopier", "COPY_AUDIO_CODECS"]

#: Audio codecs copied into the MP4 as they are; anything else is transcoded to AAC.
COPY_AUDIO_CODECS = frozenset({"aac", "mp3", "mp3float"})

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class AudioCopier:
    """Pulls audio from a source file lazily and muxes it into ``out`` up to a given time.

    Stream copy for :data:`COPY_AUDIO_CODECS`, AAC transcode (through :class:`av.AudioResampler`)
    otherwise. Created only when the source has an audio stream.
    """

    def __init__(
        self, source: Path, out: av.container.OutputContainer, offset: Fraction = Fraction(0)
    ) -> None:
        self.src = av.open(str(source))
        self.in_stream = self.src.streams.audio[0]
        # audio that starts part-way into the source is transcoded, so that it is cut to the sample
        self.copy = self.in_stream.codec_context.name in COPY_AUDIO_CODECS and offset == 0
        self.offset = Fraction(offset)
        self._packets = self.src.demux(self.in_stream)
        self._done = False
        self._pending: av.Packet | None = None
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.in_stream)
        else:
            ctx = self.in_stream.codec_context
            rate = ctx.sample_rate if ctx.sample_rate in _AAC_RATES else 48000
            layout = "mono" if ctx.layout.nb_channels == 1 else "stereo"
            self.out_stream = out.add_stream("aac", rate=rate)
            self.out_stream.layout = layout
            self.out_stream.bit_rate = 192_000 if layout == "stereo" else 128_000
            self.resampler = av.AudioResampler(
                format="fltp", layout=layout, rate=rate, frame_size=self.out_stream.codec_context.frame_size
            )
            self._samples_out = 0  # samples handed to the encoder so far
            self._pending_frame: av.AudioFrame | None = None
            self._decoded = self._decode_frames()
        self.out = out

    # -- stream copy ------------------------------------------------------------------------------
    def _copy_until(self, seconds: Fraction, final: bool) -> None:
        """Mux source packets that start before ``seconds``; ``final`` drops everything after."""
        tb = self.in_stream.time_base
        while True:
            packet = self._pending if self._pending is not None else next(self._packets, None)
            self._pending = None
            if packet is None:
                self._done = True
                return
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if packet.pts is not None and packet.pts * tb >= seconds:
                if final:
                    self._done = True  # beyond the video's end: cut here
                else:
                    self._pending = packet  # keep it for a later call
                return
            packet.stream = self.out_stream
            self.out.mux(packet)

    # -- transcode --------------------------------------------------------------------------------
    def _decode_frames(self) -> Iterator[av.AudioFrame]:
        skip = int(self.offset * self.out_stream.codec_context.sample_rate)  # samples before the offset

        def resampled() -> Iterator[av.AudioFrame]:
            for packet in self._packets:
                for frame in packet.decode():
                    frame.pts = None  # let the resampler count samples from 0
                    yield from self.resampler.resample(frame)
            yield from self.resampler.resample(None)

        for frame in resampled():
            if skip >= frame.samples:
                skip -= frame.samples
                continue
            if skip:
                arr = np.ascontiguousarray(frame.to_ndarray()[:, skip:])
                rate = frame.sample_rate
                frame = av.AudioFrame.from_ndarray(arr, format="fltp", layout=frame.layout)
                frame.sample_rate = rate
                skip = 0
            yield frame

    def _transcode_until(self, seconds: Fraction, final: bool) -> None:
        """Encode frames that end by ``seconds``; ``final`` also encodes the last one, trimmed to it."""
        rate = self.out_stream.codec_context.sample_rate
        limit = int(seconds * rate)
        while self._samples_out < limit:
            frame = self._pending_frame if self._pending_frame is not None else next(self._decoded, None)
            self._pending_frame = None
            if frame is None:  # the source is shorter than the video
                self._done = True
                return
            if self._samples_out + frame.samples > limit:
                if not final:
                    self._pending_frame = frame  # it crosses the limit: keep it for later
                    return
                keep = limit - self._samples_out
                arr = np.ascontiguousarray(frame.to_ndarray()[:, :keep])
                frame = av.AudioFrame.from_ndarray(arr, format="fltp", layout=frame.layout)
                frame.sample_rate = rate
            frame.pts = self._samples_out
            frame.time_base = Fraction(1, rate)
            self._samples_out += frame.samples
            for packet in self.out_stream.encode(frame):
                self.out.mux(packet)

    def feed_until(self, seconds: Fraction, *, final: bool = False) -> None:
        """Mux audio up to ``seconds`` of output time; ``final`` cuts there and flushes the encoder."""
        if self.copy:
            if not self._done:
                self._copy_until(seconds, final)
            return
        if not self._done:
            self._transcode_until(seconds, final)
        if final:
            self._done = True
            for packet in self.out_stream.encode(None):
                self.out.mux(packet)

    def close(self) -> None:
        """Close the source file."""
        self.src.close()
