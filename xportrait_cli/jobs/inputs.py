"""The one rule for a job's input files, shared by manifest validation and the runner's pre-flight.

A job's inputs are its portrait, driving video, reference portraits, ``--init-video``, ``--model``
and ``--model-config``. Each given one must exist, be a file (the model may also be a converted
folder, or a Hugging Face repo id of one, which is not checked here) and be readable.
:func:`xportrait_cli.jobs.manifest.load_manifest` marks a job whose inputs break the rule (the batch
runs the others); :func:`xportrait_cli.jobs.preflight.check_inputs` raises before opening them.
Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from xportrait_cli.errors import InputError
from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.weights.registry import looks_like_repo_id


def input_files(spec: JobSpec) -> list[tuple[str, Path]]:
    """``(label, path)`` of every input file ``spec`` names, in the order they are checked."""
    opts = spec.options
    inputs = [("portrait", spec.portrait), ("driving video", spec.driving)]
    inputs += [("reference portrait", r) for r in opts.reference]
    if opts.model is not None and not looks_like_repo_id(opts.model):  # a repo id is fetched later
        inputs.append(("model", opts.model))
    inputs += [("model config", opts.model_config)] if opts.model_config is not None else []
    inputs += [("init video", opts.init_video)] if opts.init_video is not None else []
    return inputs


def input_problem(spec: JobSpec, hint: str) -> InputError | None:
    """The first input of ``spec`` that is missing, a folder (except the model: a converted model
    is a folder) or unreadable, as a one-line :class:`~xportrait_cli.errors.InputError` naming the
    file, with ``hint``; ``None`` when every input passes."""
    for label, path in input_files(spec):
        if not path.exists():
            return InputError(f"{path}: {label} not found", hint)
        if label != "model" and path.is_dir():
            return InputError(f"{path}: {label} is a folder, not a file", hint)
        if not os.access(path, os.R_OK):
            return InputError(f"{path}: {label} is not readable", hint)
    return None


__all__ = ["input_files", "input_problem"]
