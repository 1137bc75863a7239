"""``xportrait convert``: an official checkpoint fetched by hand into a converted folder.

The folder is what ``download-weights`` writes (:func:`xportrait_cli.pipeline.loading.convert_checkpoint`):
diffusers' pipeline layout, loadable with ``XPortraitPipeline.from_pretrained`` and by ``--model``.
"""

from __future__ import annotations

import os
from pathlib import Path

from xportrait_cli.errors import InputError, UsageError
from xportrait_cli.weights import registry


def default_output(checkpoint: Path, dtype: str) -> Path:
    """The folder beside the checkpoint: ``<stem>-<dtype>`` (``model_state-415001-fp16/``)."""
    return checkpoint.with_name(f"{checkpoint.stem}-{dtype}")


def convert(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: str = registry.CUDA_DTYPE,
    model_config: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert ``checkpoint`` (official ``.th`` or ``.safetensors``) into ``out_dir`` (default
    :func:`default_output`), parameters in ``dtype``; an older converted folder there (either
    format) is replaced, atomically. Returns the folder.

    Raises:
        UsageError: an unknown ``dtype``, or ``out_dir`` is an existing path that is not a
            converted folder (it is never replaced).
        InputError, CheckpointError: the checkpoint or ``model_config`` cannot be read or does not
            fit (nothing is written at ``out_dir``).
    """
    registry.check_dtype(dtype)
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise InputError(
            f"{checkpoint}: checkpoint not found", "pass the .th or .safetensors file to convert"
        )
    target = Path(out_dir).expanduser() if out_dir is not None else default_output(checkpoint, dtype)
    if target.exists() and not (registry.is_converted(target) or registry.is_old_format(target)):
        raise UsageError(
            f"{target}: exists and is not a converted X-Portrait folder", hint="pass another OUT_DIR"
        )
    from xportrait_cli.pipeline.loading import convert_checkpoint

    return convert_checkpoint(checkpoint, target, config=model_config, dtype=registry.torch_dtype(dtype))
