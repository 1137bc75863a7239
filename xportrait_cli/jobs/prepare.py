"""Step 1 of a job: the inputs made ready for the sampler (crops, landmarks, the aligned frames).

Official source: ``core/test_xportrait.py`` — landmarks on 256-px copies
(``extract_local_feature_from_single_img``, L33-71), the driving frames aligned to the portrait by
one affine from the best frame (``adjust_driving_video_to_src_image``, L99-141; ``best_frame``
-1 picks it, ``NO_ALIGNMENT`` = -2 skips it), frame selection ``frames[start : start + n*stride :
stride]``, everything resized to the sampling size. ``--crop`` is ours (the official code expects
square, loosely cropped inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from xportrait_cli.events import stage
from xportrait_cli.jobs.spec import JobRun
from xportrait_cli.jobs.workdir import STORE_DIR

if TYPE_CHECKING:
    from xportrait_cli.face.crop_info import CropInfo
    from xportrait_cli.jobs.framestore import FrameStore


@dataclass
class Prepared:
    """What step 1 hands to the sampler.

    Attributes:
        source: the portrait ``(1, 3, S, S)`` float32 in [-1, 1] (``S = --size``).
        references: the ``--reference`` portraits, each like ``source``.
        store: the aligned driving frames (:class:`~xportrait_cli.jobs.framestore.FrameStore`).
        crop: the portrait's :class:`~xportrait_cli.face.crop.CropInfo` when ``--crop`` cropped it
            (``--paste-back`` composes into the original), else None.
    """

    source: torch.Tensor
    references: list[torch.Tensor]
    store: FrameStore
    crop: CropInfo | None


def portrait_tensor(path: Path, size: int) -> torch.Tensor:
    """The image at ``path`` as the pipeline's ``(1, 3, size, size)`` float32 in [-1, 1]."""
    from xportrait_cli.image import load_portrait

    rgb = load_portrait(path, size)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() * 2 - 1


def prepare(run: JobRun) -> Prepared:
    """Step 1: crop the inputs (``--crop``), find the portrait's landmarks and best frame (stage
    ``portrait``), and prepare the driving frames into the work dir's store (stage ``align``: the
    driving video's landmarks, affine-aligned to the portrait's; see the module docstring). A
    resumed job reuses the crops and the store.

    Raises:
        NoFaceError: no face in the portrait (``--best-frame`` other than ``NO_ALIGNMENT``) or in
            every driving frame; InputError for unreadable inputs.
    """
    from xportrait_cli.face.crop_inputs import crop_inputs
    from xportrait_cli.face.landmarks import make_detector, portrait_for_alignment
    from xportrait_cli.image import load_image
    from xportrait_cli.jobs.prepare_driving import prepare_driving

    spec, opts, job = run.spec, run.spec.options, run.job
    detector = make_detector(opts.landmarks, device=str(run.device))  # FAN on the job's device
    run.log("info", f"landmarks: {detector.name}")
    portrait, driving, crop = crop_inputs(
        spec.portrait, spec.driving, run.work, mode=opts.crop, size=max(opts.size, 512), detector=detector,
        events=run.events, job=job,
    )  # fmt: skip
    with stage(run.events, "portrait", job=job):
        portrait_landmarks, best_frame, warning = portrait_for_alignment(
            load_image(portrait), detector, opts.best_frame, name=str(spec.portrait)
        )
        if warning:
            run.log("warning", warning)
    with stage(run.events, "align", job=job) as progress:
        store = prepare_driving(
            driving, portrait_landmarks, run.work / STORE_DIR, size=opts.size, best_frame=best_frame,
            start=opts.start, num_frames=opts.frames, stride=opts.stride, detector=detector,
            on_progress=progress,
        )  # fmt: skip
        if store.filled_warning:
            run.log("warning", store.filled_warning)
    source = portrait_tensor(portrait, opts.size)
    references = [portrait_tensor(r, opts.size) for r in opts.reference]
    return Prepared(source, references, store, crop)
