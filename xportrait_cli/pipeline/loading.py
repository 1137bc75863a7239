"""Loading :class:`.XPortraitPipeline` from any weights ``--model`` accepts, and the converted folder.

Accepted (:func:`load_pipeline`):

* the official ``.th`` pickle or an official-layout ``.safetensors`` file: converted in memory
  (:func:`xportrait_cli.models.loading.components_from_checkpoint`);
* a converted folder, diffusers' layout (``model_index.json``, ``unet/``, ``reference_net/``,
  ``global_controlnet/``, ``local_controlnet/``, ``vae/`` with ``config.json`` +
  ``diffusion_pytorch_model.safetensors`` each, ``scheduler/``), written by :func:`convert_checkpoint`
  (``xportrait convert``, ``xportrait download-weights``) and loaded by diffusers' ``from_pretrained``,
  memory-mapped, tensor by tensor in the target dtype;
* a Hugging Face Hub repo id of such a folder (``huggingface_hub.snapshot_download``);
* an in-memory official state dict.

A folder in the old format (``config.json`` with ``"format": "xportrait-converted"`` +
``networks.safetensors``) is refused with a :class:`~xportrait_cli.errors.CheckpointError` saying to
convert again; it is not converted silently.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel
from diffusers.utils import logging as diffusers_logging
from safetensors import safe_open

from xportrait_cli.errors import CheckpointError, InputError
from xportrait_cli.files import atomic_write
from xportrait_cli.models.convert import check_against
from xportrait_cli.models.loading import Checkpoint, components_from_checkpoint
from xportrait_cli.models.reference_net import ReferenceNet
from xportrait_cli.models.unet import XPortraitUNet
from xportrait_cli.pipeline.pipeline_xportrait import XPortraitPipeline
from xportrait_cli.pipeline.schedule import official_scheduler
from xportrait_cli.weights import registry

#: The model components of a converted folder and their classes (``scheduler/`` aside).
COMPONENTS = {
    "unet": XPortraitUNet,
    "reference_net": ReferenceNet,
    "global_controlnet": ControlNetModel,
    "local_controlnet": ControlNetModel,
    "vae": AutoencoderKL,
}
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_HUB_FILES = ["model_index.json", "*/config.json", "*/scheduler_config.json", "*/*.safetensors*"]


def resolve_folder(
    model: str | os.PathLike, *, revision: str | None = None, token=None, cache_dir=None
) -> Path:
    """A local path as it is; a Hub repo id (``org/name``, not an existing path) downloaded with
    ``snapshot_download`` into the hub cache (only the folder's config and safetensors files), from
    ``HF_ENDPOINT`` (read now) with ``HF_TOKEN`` / the stored login unless ``token`` is given.

    Raises:
        InputError: neither an existing path nor a repo the Hub (``HF_ENDPOINT``) serves.
    """
    path = Path(model).expanduser()
    if not registry.looks_like_repo_id(model):
        if not path.exists():
            raise InputError(
                f"{model}: model not found", "pass an existing --model or run `xportrait download-weights`"
            )
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            str(model),
            revision=revision,
            token=token,
            cache_dir=str(registry.hub_cache_dir(cache_dir)),
            endpoint=registry.endpoint_url(),
            allow_patterns=_HUB_FILES,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{model}: no such file or folder, and not a Hub repo of a converted folder ({first})",
            "pass an existing --model, or a repo id the Hub serves (HF_ENDPOINT, HF_TOKEN)",
        ) from None
    return Path(folder)


def _stored_shapes(component_dir: Path) -> dict[str, torch.Tensor]:
    """Meta tensors of the shapes stored in a component folder's safetensors (headers only)."""
    files = [component_dir / WEIGHTS_NAME]
    index = component_dir / f"{WEIGHTS_NAME}.index.json"
    if not files[0].is_file() and index.is_file():
        files = sorted({component_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    shapes = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file}: missing", "convert the checkpoint again with `xportrait convert`")
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shapes[key] = torch.empty(f.get_slice(key).get_shape(), device="meta")
    return shapes


def check_format(folder: str | os.PathLike) -> None:
    """Check that ``folder`` is a converted folder of this version (cheap: no tensors read).

    Raises:
        CheckpointError: an old-format folder; the message says to run ``xportrait convert``.
        InputError: not a converted folder at all.
    """
    folder = Path(folder)
    if registry.is_old_format(folder):
        raise CheckpointError(
            f"{folder}: converted by an older xportrait (config.json + networks.safetensors), "
            "a format this version no longer reads",
            f"convert the checkpoint again: `xportrait convert <checkpoint> {folder}` "
            "(or `xportrait download-weights`)",
        )
    if not registry.is_converted(folder):
        raise InputError(
            f"{folder}: is a folder but not a converted X-Portrait folder (no {registry.MODEL_INDEX})",
            "pass the .th file or a folder made by `xportrait convert` / `xportrait download-weights`",
        )


def check_folder(folder: str | os.PathLike) -> None:
    """Check a converted folder before loading: its format, and every component's tensor keys and
    shapes against the model its ``config.json`` builds (diffusers only warns on unexpected keys).

    Raises:
        CheckpointError: an old-format folder (says to run ``xportrait convert``), a component
            missing from ``model_index.json`` or its folder, or a missing, unexpected or
            wrong-shaped tensor (naming the component and the keys).
        InputError: not a converted folder at all.
    """
    folder = Path(folder)
    check_format(folder)
    index = json.loads((folder / registry.MODEL_INDEX).read_text())
    hint = f"convert the checkpoint again with `xportrait convert <checkpoint> {folder}`"
    for name, cls in COMPONENTS.items():
        if name not in index or not (folder / name / "config.json").is_file():
            raise CheckpointError(f"{folder}: has no component {name!r} ({name}/config.json)", hint)
        with torch.device("meta"):
            expected = cls.from_config(cls.load_config(folder / name)).state_dict()
        stored = _stored_shapes(folder / name)
        check_against(
            {f"{name}.{k}": v for k, v in expected.items()},
            {f"{name}.{k}": v for k, v in stored.items()},
            f"{folder / name}",
            hint,
        )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """diffusers' "Loading pipeline components" bar off (nothing below the CLI prints)."""
    enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            diffusers_logging.enable_progress_bar()


def load_pipeline(
    model: Checkpoint,
    *,
    config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> XPortraitPipeline:
    """The pipeline from any weights ``--model`` accepts (see the module docstring).

    Args:
        model: official ``.th``/``.safetensors`` path, a converted folder, a Hub repo id of one, or
            an in-memory official state dict.
        config: official-schema model YAML, for an official checkpoint only (a folder holds its
            configs); default: the official SD-1.5 config.
        device: where the weights go (``"meta"``: keys and shapes only, official checkpoints).
        dtype: weight dtype (fp32 on CPU; fp16/bf16 on CUDA).

    Raises:
        CheckpointError: keys missing, unexpected or of the wrong shape; an old-format folder.
        InputError: an unreadable checkpoint or config, or a model that is nowhere.
    """
    if not isinstance(model, Mapping):
        model = resolve_folder(model)
        if model.is_dir():
            device = torch.device(device)
            on_gpu = device.type == "cuda" and device.index in (None, 0)
            with _quiet_loading():
                pipe = XPortraitPipeline.from_pretrained(
                    model, dtype=dtype, device_map="cuda" if on_gpu else None
                )
            return pipe if device.type == "cpu" else pipe.to(device)
    components = components_from_checkpoint(model, config=config, device=device, dtype=dtype)
    return XPortraitPipeline(**components, scheduler=official_scheduler())


def convert_checkpoint(
    checkpoint: Checkpoint,
    output_dir: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Convert an official checkpoint once into a converted folder (``save_pretrained``'s layout).

    Parameters are stored in ``dtype``, buffers (the motion modules' position tables, the empty
    prompt's embedding) in float32, so a folder of any dtype loads them exactly. The folder is built
    under a temporary name beside ``output_dir`` (:func:`xportrait_cli.files.atomic_write`) and renamed
    into place when complete, replacing an older folder there; on an error nothing is left at
    ``output_dir``.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError, InputError: as :func:`load_pipeline`.
    """
    output_dir = Path(output_dir)
    pipe = load_pipeline(checkpoint, config=config, device="cpu", dtype=torch.float32)
    for name in COMPONENTS:
        for param in getattr(pipe, name).parameters():
            param.data = param.data.to(dtype)
    with atomic_write(output_dir) as tmp:
        tmp.mkdir(parents=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
    return output_dir
