"""68-point facial landmarks: a small detector interface and two backends.

- ``fan``: face-alignment's 2D-FAN (``LandmarksType.TWO_D``, SFD face detector), what the official
  pipeline uses. Weights come from the torch hub cache (``$TORCH_HOME/hub/checkpoints``, filled by
  ``xportrait download-weights``); this module never downloads and never turns on ``torch.compile``.
- ``dlib``: the offline backend. dlib's HOG frontal face detector plus the 68-point shape predictor
  shipped in the ``face-recognition-models`` PyPI package (same iBUG 68-point layout). Works on a
  machine that cannot download anything. Its model was trained on iBUG 300-W, whose licence
  excludes commercial use (see README, "Landmark backends").
- ``auto``: ``fan`` when both of its weight files are cached, else ``dlib``; logs which.

All detectors take an (H, W, 3) uint8 RGB image and return (68, 2) float32 (x, y) in pixels of that
image, iBUG order, or ``None`` when no face is found. The official pipeline runs them on 256×256
images (:func:`xportrait_cli.image.landmark_input`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from xportrait_cli.errors import UsageError, WeightsMissingError
from xportrait_cli.face.second_search import SecondSearch
from xportrait_cli.image import LANDMARK_RES
from xportrait_cli.weights.registry import LANDMARK_FILES, landmark_dir

log = logging.getLogger(__name__)

BACKENDS = ("auto", "fan", "dlib")
#: dlib HOG detections scoring below this are taken as false positives (real faces score ~0.5–1.6,
#: shirt patches and textures ~0–0.15) unless no detection scores higher.
DLIB_MIN_SCORE = 0.3


@runtime_checkable
class LandmarkDetector(Protocol):
    """Anything that finds 68 iBUG landmarks on one face.

    ``name`` identifies the backend (it enters job fingerprints). ``detect(image)`` takes an
    (H, W, 3) uint8 RGB image and returns (68, 2) float32 (x, y) pixels of that image for one face
    (the backend's first/largest face) or ``None`` when there is none. A backend may also have
    ``detect_all(image, thorough=True)`` returning every face's (68, 2) landmarks (the built-in ones
    do; :func:`xportrait_cli.face.detect.detect_faces` falls back to ``detect`` otherwise).
    """

    name: str

    def detect(self, image: np.ndarray) -> np.ndarray | None: ...


def _face_recognition_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError(
            "the offline landmark model is not installed (package face-recognition-models)",
            "pip install face-recognition-models dlib-bin",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibDetector(SecondSearch):
    """Offline 68-point landmarks: dlib HOG face detector + ``shape_predictor_68_face_landmarks.dat``.

    The predictor file is located inside the installed ``face-recognition-models`` package with
    :func:`importlib.util.find_spec` (importing that package needs ``pkg_resources``). The detector
    runs at ``upsample`` 0 first, retries at 1 (faces down to ~40 px), then on copies rotated by
    ±15° and ±30° (tilted heads). Of several faces the largest box is used. CPU only, ~15–30 ms
    per 256×256 image.

    Raises :class:`~xportrait_cli.errors.WeightsMissingError` if the package or file is missing.
    Licence: the model was trained on iBUG 300-W, which restricts commercial use.
    """

    name = "dlib"
    #: In-plane rotations (degrees, counter-clockwise) tried when no upright face is found.
    rotations: tuple[float, ...] = (-15.0, 15.0, -30.0, 30.0)

    def __init__(self, predictor_path: str | os.PathLike[str] | None = None) -> None:
        import dlib

        path = (
            Path(predictor_path)
            if predictor_path
            else _face_recognition_models_dir() / ("shape_predictor_68_face_landmarks.dat")
        )
        if not path.is_file():
            raise WeightsMissingError(
                f"dlib 68-point landmark model not found: {path}",
                "pip install --force-reinstall face-recognition-models",
            )
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))
        self._dlib = dlib

    def face_box(self, image: np.ndarray):
        """The largest dlib face rectangle in upright ``image`` (uint8 RGB), or ``None``."""
        img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        for upsample in (0, 1):
            rects = list(self._detector(img, upsample))
            if rects:
                return max(rects, key=lambda r: r.width() * r.height())
        return None

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """(68, 2) float32 landmarks of the largest face in ``image`` (uint8 RGB), or ``None``.

        When the upright search finds nothing, the image is rotated by each of
        :attr:`rotations` degrees (HOG only finds faces within ~±15° of upright) and the landmarks
        found there are rotated back into ``image`` pixels.
        """
        import cv2

        img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        rect = self.face_box(img)
        if rect is not None:
            return self._shape(img, rect)
        h, w = img.shape[:2]
        for angle in self.rotations:
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            rot = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            rects = list(self._detector(rot, 0))
            if rects:
                pts = self._shape(rot, max(rects, key=lambda r: r.width() * r.height()))
                inv = cv2.invertAffineTransform(m)
                return (pts.astype(np.float64) @ inv[:, :2].T + inv[:, 2]).astype(np.float32)
        return None

    def detect_all(self, image: np.ndarray, thorough: bool = True) -> list[np.ndarray]:
        """(68, 2) float32 landmarks of every face in ``image`` (uint8 RGB), in dlib's order.

        HOG rectangles at upsample 1 when ``thorough`` (faces down to ~40 px), else at 0 and at 1
        only if 0 found none, each through the shape predictor; rectangles scoring below
        :data:`DLIB_MIN_SCORE` are dropped unless none scores above it (then the best one is kept).
        When no upright face is found, :meth:`detect`'s rotated retries (tilted heads) give at most one.
        """
        img = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        for upsample in (1,) if thorough else (0, 1):
            rects, scores, _ = self._detector.run(img, upsample, 0.0)
            if len(rects):
                best = max(range(len(rects)), key=lambda i: scores[i])
                keep = [r for r, sc in zip(rects, scores, strict=True) if sc >= DLIB_MIN_SCORE]
                return [self._shape(img, r) for r in keep or [rects[best]]]
        one = self.detect(img)
        return [] if one is None else [one]

    def _cnn_model_path(self) -> Path:
        return _face_recognition_models_dir() / "mmod_human_face_detector.dat"

    def _shape(self, img: np.ndarray, rect) -> np.ndarray:
        shape = self._predictor(img, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def fan_weights_cached() -> bool:
    """Whether both face-alignment weight files (FAN-68 and S3FD,
    :data:`~xportrait_cli.weights.registry.LANDMARK_FILES`) are in
    :func:`~xportrait_cli.weights.registry.landmark_dir`."""
    d = landmark_dir()
    return all((d / f).is_file() for f in LANDMARK_FILES.values())


class FanDetector:
    """face-alignment 2D-FAN landmarks (the official backend), from cached weights only.

    Built as the official code builds it: ``FaceAlignment(LandmarksType.TWO_D, flip_input=True)``
    with the SFD detector, on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"`` …) and with
    ``compile=False`` (face-alignment 1.5 defaults to ``torch.compile``). Returns the first face, as
    the official ``get_landmarks_from_image(img)[0]``. ~0.7 s per face on CPU.

    Raises :class:`~xportrait_cli.errors.WeightsMissingError` when the weights are not cached
    (never downloads).
    """

    name = "fan"

    def __init__(self, device: str = "cpu") -> None:
        if not fan_weights_cached():
            missing = [f for f in LANDMARK_FILES.values() if not (landmark_dir() / f).is_file()]
            raise WeightsMissingError(
                f"face-alignment weights not found in {landmark_dir()}: {', '.join(missing)}",
                "run `xportrait download-weights`, or use --landmarks dlib",
            )
        import face_alignment
        import torch

        kwargs = {"compile": False}
        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D,
            flip_input=True,
            device=str(device),
            dtype=torch.float32,
            face_detector="sfd",
            face_detector_kwargs={"path_to_detector": str(landmark_dir() / LANDMARK_FILES["s3fd"])},
            **kwargs,
        )

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """(68, 2) float32 landmarks of the first face in ``image`` (uint8 RGB), or ``None``."""
        preds = self._fa.get_landmarks_from_image(np.ascontiguousarray(image[..., :3]))
        if not preds:
            return None
        return np.asarray(preds[0][:, :2], dtype=np.float32)

    def detect_all(self, image: np.ndarray, thorough: bool = True) -> list[np.ndarray]:
        """(68, 2) float32 landmarks of every face ``get_landmarks_from_image`` finds in ``image``
        (uint8 RGB), in its order; ``thorough`` is ignored (SFD searches every scale)."""
        preds = self._fa.get_landmarks_from_image(np.ascontiguousarray(image[..., :3])) or []
        return [np.asarray(p[:, :2], dtype=np.float32) for p in preds]


def make_detector(name: str = "auto", device: str = "cpu") -> LandmarkDetector:
    """Build a landmark backend by name: ``"auto"``, ``"fan"`` or ``"dlib"`` (see module docstring).

    ``device`` applies to ``fan`` only. ``auto`` logs the backend it picked. Raises
    :class:`~xportrait_cli.errors.UsageError` for an unknown name and
    :class:`~xportrait_cli.errors.WeightsMissingError` when the chosen backend's model is missing.
    """
    if name not in BACKENDS:
        raise UsageError(f"unknown landmark backend {name!r}", f"choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        if fan_weights_cached():
            log.info("landmarks: fan (face-alignment weights found in %s)", landmark_dir())
            return FanDetector(device)
        log.info("landmarks: dlib (offline backend; face-alignment weights not cached in %s)", landmark_dir())
        return DlibDetector()
    if name == "fan":
        return FanDetector(device)
    return DlibDetector()


def fill_missing(landmarks: np.ndarray, found: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Fill frames without a face by linear interpolation of their neighbours' landmarks.

    ``landmarks``: (n, 68, 2) float (values of frames where ``found`` is False are ignored).
    ``found``: (n,) bool. Interior gaps are interpolated per coordinate in frame index; leading and
    trailing gaps hold the nearest detected frame. Returns a new (n, 68, 2) float32 array. Raises
    ``ValueError`` if no frame has a face.
    """
    lmk = np.asarray(landmarks, dtype=np.float32)
    ok = np.asarray(found, dtype=bool)
    if not ok.any():
        raise ValueError("no frame has a face")
    if ok.all():
        return lmk.copy()
    n = lmk.shape[0]
    t = np.arange(n)
    flat = lmk.reshape(n, -1)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(t, t[ok], flat[ok, j])  # holds the end values outside the range
    return out.reshape(lmk.shape).astype(np.float32)


def _to_256(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frame pixels → pixels of its squashed 256² copy (pixel-centre convention, as the resize)."""
    scale = np.array([LANDMARK_RES / width, LANDMARK_RES / height])
    return ((np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def find_landmarks(
    frame: np.ndarray, detector: LandmarkDetector, near: np.ndarray | None = None, second: bool = True
) -> tuple[np.ndarray | None, bool]:
    """Landmarks of one frame in pixels of its official squashed 256² copy, with a second search.

    ``frame``: (H, W, 3) uint8 RGB at its own size; ``near``: the previous frame's landmarks at
    256² scale, or ``None``. First ``detector.detect`` on :func:`~xportrait_cli.image.landmark_input`
    (the official input; frames found there keep the official landmarks); where that finds nothing
    and the detector has a ``detect_missed`` method (dlib: the frame at its own aspect, the CNN
    detector, tracking from ``near``), that, unless ``second`` is False. Returns ((68, 2) float32
    or ``None``, whether the second search found it).
    """
    from xportrait_cli.image import landmark_input

    lmk = detector.detect(landmark_input(frame))
    retry = getattr(detector, "detect_missed", None)
    if lmk is not None or retry is None or not second:
        return lmk, False
    h, w = frame.shape[:2]
    back = None
    if near is not None:
        back = (np.asarray(near, dtype=np.float64) + 0.5) * (w / LANDMARK_RES, h / LANDMARK_RES) - 0.5
    pts = retry(frame, back)
    return (None, False) if pts is None else (_to_256(pts, w, h), True)


def detect_portrait(rgb: np.ndarray, detector: LandmarkDetector, name: str = "portrait") -> np.ndarray:
    """Landmarks of the portrait as the official pipeline finds them, at 256 px scale.

    ``rgb``: (H, W, 3) uint8 portrait (any size; it is squashed to 256×256 with
    :func:`xportrait_cli.image.landmark_input`, as the official code does). Returns (68, 2) float32
    (x, y) in pixels of that 256×256 image. Raises :class:`~xportrait_cli.errors.NoFaceError` naming
    ``name`` when no face is found.
    """
    from xportrait_cli.errors import NoFaceError

    lmk, _ = find_landmarks(rgb, detector)
    if lmk is None:
        raise NoFaceError(
            f"no face found in {name} (landmarks: {detector.name})",
            "use a portrait with one clearly visible, roughly frontal face, or crop it to the head",
        )
    return lmk


def portrait_for_alignment(
    rgb: np.ndarray, detector: LandmarkDetector, best_frame: int, name: str = "portrait"
) -> tuple[np.ndarray | None, int, str | None]:
    """The portrait's landmarks for alignment and the ``best_frame`` to use, for stylized portraits.

    Returns ``(landmarks at 256 px or None, best_frame, warning or None)``: with ``best_frame`` −2
    no landmarks are needed; with −1 (automatic) and no face found the job goes on without
    alignment (``best_frame`` −2) and the warning says so. Raises
    :class:`~xportrait_cli.errors.NoFaceError` for an explicit frame index and no face, with a hint
    naming ``--best-frame -2``.
    """
    from xportrait_cli.errors import NoFaceError

    if best_frame == -2:
        return None, best_frame, None
    try:
        return detect_portrait(rgb, detector, name), best_frame, None
    except NoFaceError as exc:
        if best_frame != -1:
            raise NoFaceError(
                exc.message,
                "pass --best-frame -2 to animate it without alignment (the portrait's landmarks only "
                "pick the alignment frame), or use a portrait with a visible face",
            ) from None
        return None, -2, f"{exc.message}: animating without alignment (as --best-frame -2)"
