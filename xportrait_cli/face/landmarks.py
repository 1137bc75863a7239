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
from xportrait_cli.image import LANDMARK_RES
from xportrait_cli.weights.registry import LANDMARK_FILES, landmark_dir

log = logging.getLogger(__name__)

BACKENDS = ("auto", "fan", "dlib")
#: Longest side of the copy dlib's CNN face detector searches (~1.4 s at 512² on one core).
CNN_SIDE = 512


@runtime_checkable
class LandmarkDetector(Protocol):
    """Anything that finds 68 iBUG landmarks on one face.

    ``name`` identifies the backend (it enters job fingerprints). ``detect(image)`` takes an
    (H, W, 3) uint8 RGB image and returns (68, 2) float32 (x, y) pixels of that image for one face
    (the backend's first/largest face) or ``None`` when there is none.
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


class DlibDetector:
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

    def detect_missed(
        self, frame: np.ndarray, near: np.ndarray | None = None, cnn: bool = True
    ) -> np.ndarray | None:
        """A second search for a frame where :meth:`detect` on the squashed 256² copy found nothing.

        ``frame``: (H, W, 3) uint8 RGB at its own aspect; ``near``: (68, 2) landmarks of the
        previous frame in ``frame`` pixels, or ``None``. In order: the HOG detector (upsample 0,
        then 1, then the ±15°/±30° turns) on a copy of the frame at its own aspect with the long side
        brought to 640 px when outside 320–800 px (a 9:16 frame squashed to a square hides its
        face from HOG); dlib's CNN face detector (``mmod_human_face_detector.dat`` in
        ``face-recognition-models``, on a copy whose long side is at most :data:`CNN_SIDE`; ~1.4 s
        per 512² frame on one core, so only here and only with ``cnn``); the 68-point predictor in
        ``near``'s box (tracking from the neighbouring frame), kept when its box is 0.7–1.4× the
        size of ``near``'s and within half a face of it.
        Returns (68, 2) float32 landmarks in ``frame`` pixels, or ``None``.
        """
        import cv2

        img = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        h, w = img.shape[:2]
        side = max(h, w)
        k = 1.0 if 320 <= side <= 800 else 640 / side
        work = (
            img if k == 1.0 else cv2.resize(img, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        )
        kx, ky = work.shape[1] / w, work.shape[0] / h
        pts = self.detect(work)
        if pts is None and cnn and self.cnn_detector() is not None:
            c = min(1.0, CNN_SIDE / max(work.shape[:2]))  # its cost grows with the pixels: at most 512²
            small = work if c == 1.0 else cv2.resize(work, None, fx=c, fy=c, interpolation=cv2.INTER_AREA)
            rects = [d.rect for d in self.cnn_detector()(small, 0)]
            if rects:
                r = max(rects, key=lambda r: r.width() * r.height())
                box = (round(v / c) for v in (r.left(), r.top(), r.right(), r.bottom()))
                pts = self._shape(work, self._dlib.rectangle(*box))
        if pts is not None:
            return ((pts.astype(np.float64) + 0.5) / (kx, ky) - 0.5).astype(np.float32)
        if near is None:
            return None
        lo, hi = np.asarray(near).min(axis=0), np.asarray(near).max(axis=0)
        pts = self._shape(img, self._rect_of(near))  # 3-4 px from HOG's on the next 512² frame
        size, near_size = float((pts.max(0) - pts.min(0)).max()), float((hi - lo).max())
        shift = float(np.linalg.norm((pts.min(0) + pts.max(0)) / 2 - (lo + hi) / 2))
        if 0.7 <= size / max(near_size, 1.0) <= 1.4 and shift <= near_size / 2:
            return pts
        return None

    def _rect_of(self, landmarks: np.ndarray):
        """The HOG detector's rectangle for a face with these 68 landmarks: their box with the top
        and bottom moved up by 7 % and 10 % of its height, the right by 3.5 % of its width (mean
        offsets measured on the shared clips, 31 frames)."""
        (x0, y0), (x1, y1) = np.asarray(landmarks).min(axis=0), np.asarray(landmarks).max(axis=0)
        w, h = x1 - x0, y1 - y0
        box = (x0, y0 - 0.07 * h, x1 + 0.035 * w, y1 - 0.10 * h)
        return self._dlib.rectangle(*(int(round(v)) for v in box))

    def cnn_detector(self):
        """dlib's CNN face detector from ``face-recognition-models`` (loaded on first use), or
        ``None`` when the file is missing."""
        if not hasattr(self, "_cnn"):
            path = _face_recognition_models_dir() / "mmod_human_face_detector.dat"
            self._cnn = self._dlib.cnn_face_detection_model_v1(str(path)) if path.is_file() else None
        return self._cnn

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
