"""Which crop for which file: :func:`crop_file` (an image or a video, by suffix) and
:func:`crop_inputs`, the square face crops ``animate --crop`` and ``inspect --crop`` make of their
inputs. Not in the official code, which takes square inputs as they are (official
``core/test_xportrait.py`` squashes a non-square one to 512²).
"""

from __future__ import annotations

import os
from pathlib import Path

from xportrait_cli.errors import NoFaceError
from xportrait_cli.events import EventSink, Log, null_sink
from xportrait_cli.face.crop import crop_image, default_output, input_kind
from xportrait_cli.face.crop_info import CropInfo, sidecar_path
from xportrait_cli.face.crop_options import CropOptions
from xportrait_cli.face.crop_video import crop_video
from xportrait_cli.face.landmarks import LandmarkDetector

__all__ = ["crop_file", "crop_inputs"]


def crop_file(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    options: CropOptions | None = None,
    *,
    detector: LandmarkDetector | None = None,
    events: EventSink = null_sink,
) -> CropInfo:
    """Crop an image (:func:`~xportrait_cli.face.crop.crop_image`) or a video
    (:func:`~xportrait_cli.face.crop_video.crop_video`, by suffix, see
    :func:`~xportrait_cli.face.crop.input_kind`) to ``out_path``, default
    :func:`~xportrait_cli.face.crop.default_output` in the current directory.

    Returns the :class:`~xportrait_cli.face.crop_info.CropInfo` written beside the output. Raises
    as those two functions.
    """
    src = Path(path)
    out = Path(out_path) if out_path is not None else default_output(src)
    if input_kind(src) == "video":
        return crop_video(src, out, options, detector=detector, events=events)
    return crop_image(src, out, options, detector=detector)


def _needs_crop(path: Path, mode: str) -> tuple[bool, tuple[int, int]]:
    """Whether ``--crop mode`` crops ``path``, and its ``(width, height)`` (header only)."""
    if input_kind(path) == "video":
        from xportrait_cli.video.reader import probe_video

        info = probe_video(path)
        size = (info.width, info.height)
    else:
        from xportrait_cli.image import load_image

        height, width = load_image(path).shape[:2]
        size = (width, height)
    return mode == "on" or (mode == "auto" and size[0] != size[1]), size


def crop_inputs(
    portrait: Path,
    driving: Path | None,
    work_dir: Path,
    *,
    mode: str,
    size: int,
    detector: LandmarkDetector,
    events: EventSink = null_sink,
    job: str | None = None,
) -> tuple[Path, Path, CropInfo | None]:
    """``animate --crop`` and ``inspect --crop``: square face crops of the portrait and the driving
    video, made once in ``work_dir`` (a resumed job reuses them: the sidecar is written last).

    ``mode``: ``"auto"`` crops the inputs that are not square (a square input is used as the
    official code uses it), ``"on"`` both, ``"off"`` neither. Each crop is logged (a
    :class:`~xportrait_cli.events.Log` event). Under ``auto`` a portrait without a face (a stylized
    one) is used uncropped, with a warning. Returns (portrait, driving, the portrait's
    :class:`~xportrait_cli.face.crop_info.CropInfo` or ``None`` when it was not cropped). Raises
    :class:`~xportrait_cli.errors.NoFaceError` (hint: ``--crop off``) for a driving video without a
    face, or a portrait without one under ``on``. ``driving`` may be ``None`` (a portrait alone).
    """
    used = {"portrait": Path(portrait), "driving": None if driving is None else Path(driving)}
    info = None
    for name, source in used.items():
        if source is None or mode == "off":
            continue
        crop, (width, height) = _needs_crop(source, mode)
        if not crop:
            continue
        target = Path(work_dir) / f"{name}.crop{source.suffix if name == 'driving' else '.png'}"
        if not sidecar_path(target).is_file():
            try:
                crop_file(source, target, CropOptions(size=size), detector=detector, events=events)
            except NoFaceError as exc:
                if mode == "on" or name == "driving":
                    raise NoFaceError(exc.message, f"{exc.hint}, or pass --crop off") from None
                why = f"{exc.message}: the {width}x{height} portrait is not cropped (squashed to a square)"
                events(Log("warning", why, job=job))
                continue
        found = CropInfo.load(sidecar_path(target))
        box = found.box.tolist()
        events(
            Log(
                "info",
                f"cropped the {name} ({width}x{height}) to the face: box {box} (--crop {mode})",
                job=job,
            )
        )
        used[name] = target
        info = found if name == "portrait" else info
    return used["portrait"], used["driving"], info
