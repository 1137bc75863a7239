"""Reading official checkpoints, converting them once, and loading the networks fast.

Formats accepted by :func:`load_networks`:

* the official ``.th`` pickle (``model_state-415001.th``), read with ``torch.load(weights_only=True,
  mmap=True)`` — no code from a checkpoint is ever executed — as ``{'state_dict': ...}`` or a bare dict;
* an official-layout ``.safetensors`` file;
* a converted folder written by :func:`convert_checkpoint` (``config.json`` + ``networks.safetensors``
  in this package's layout, optionally fp16/bf16), memory-mapped, so the 12 GB pickle is read once;
* an in-memory official state dict (real or meta tensors).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xportrait_cli.errors import CheckpointError, InputError
from xportrait_cli.files import atomic_write
from xportrait_cli.models.architecture import Architecture, build_architecture
from xportrait_cli.models.convert import check_against, convert_official_state_dict
from xportrait_cli.models.networks import XPortraitNetworks, build_text_encoder, encode_empty_prompt
from xportrait_cli.weights.registry import CONVERTED_CONFIG, CONVERTED_WEIGHTS, is_converted

CONVERTED_FORMAT = "xportrait-converted"
CONVERTED_VERSION = 1

Checkpoint = str | os.PathLike | Mapping[str, torch.Tensor]


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official-layout state dict from a ``.th``/``.pt``/``.ckpt`` pickle or ``.safetensors``.

    Pickles are loaded with ``weights_only=True`` (no code execution) and memory-mapped when they are in
    the zip format. ``{'state_dict': {...}}`` and a bare dict are both accepted.

    Raises:
        InputError: missing file, a directory, or a file that is not a checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found", "run `xportrait download-weights` or pass --model")
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder but not a converted checkpoint (no {CONVERTED_CONFIG})",
            "pass the .th file or a folder made by `xportrait download-weights`",
        )
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickle
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        refused = _refused_global(exc)
        if refused:  # weights_only refused a global; PyTorch's advice to load it unsafely is dropped
            raise InputError(
                f"{path}: holds code objects (global {refused}) and will not be loaded",
                "use the official checkpoint from `xportrait download-weights`, or a .safetensors file",
            ) from None
        raise InputError(
            f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {_reason(exc)})",
            "is the download complete? `xportrait download-weights --check` verifies it",
        ) from None
    state_dict = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise InputError(
            f"{path}: not a state dict of tensors", "pass the X-Portrait checkpoint (model_state-415001.th)"
        )
    return state_dict


def _refused_global(exc: Exception) -> str | None:
    """The global a ``weights_only`` load refused (e.g. ``posix.system``), or ``None``."""
    found = (
        re.search(r"unsupported GLOBAL (\S+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    )
    return found.group(1) if found else None


def _reason(exc: Exception) -> str:
    """The first line of a reader error; for a refused pickle the unpickler's own line (e.g.
    ``Unsupported operand 110``), not PyTorch's advice to load with ``weights_only=False``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError) and len(lines) > 2 and "weights_only" in lines[0]:
        return lines[2]
    return lines[0] if lines else "unreadable"


def _official_state_dict(checkpoint: Checkpoint) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        return checkpoint.get("state_dict", checkpoint)
    return read_checkpoint(checkpoint)


def _load_into(
    module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], device, dtype, what: str
) -> None:
    expected = module.state_dict()
    check_against(expected, tensors, what)
    if torch.device(device).type == "meta":
        return
    # Each tensor straight into the target dtype (no staging copy); one already in it stays in the
    # mapped file. When those are the smaller part they are cloned, so that a few fp32 buffers
    # (position tables, context) do not keep a whole mapped fp16 file resident beside fp32 copies.
    loaded = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    kept = [k for k, t in loaded.items() if t is tensors[k]]
    if 2 * sum(loaded[k].nbytes for k in kept) < sum(t.nbytes for t in loaded.values()):
        loaded.update({k: loaded[k].clone() for k in kept})
    module.load_state_dict(loaded, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(
            f"{what}: tensors left unloaded: {', '.join(left[:5])}", "this is a bug in xportrait"
        )


def _build(architecture: Architecture) -> XPortraitNetworks:
    """The networks on the meta device: weights are assigned by :func:`_load_into`."""
    with torch.device("meta"):
        networks = XPortraitNetworks(architecture)
    return networks


def load_networks(
    checkpoint: Checkpoint,
    *,
    config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> XPortraitNetworks:
    """Build the X-Portrait networks and load their weights strictly.

    Args:
        checkpoint: official ``.th``/``.safetensors`` path, a converted folder, or an in-memory official
            state dict (meta tensors allowed with ``device="meta"``).
        config: official-schema model YAML (structure); default: the official SD-1.5 config. Widths
            always come from the checkpoint's shapes. Ignored for converted folders.
        device: where the weights go; ``"meta"`` builds and checks every key and shape without memory.
        dtype: weight dtype (fp32 on CPU; fp16/bf16 on CUDA — weights are cast, not autocast).

    Returns:
        :class:`XPortraitNetworks` in eval mode with ``requires_grad`` off.

    Raises:
        CheckpointError: keys missing, unexpected or of the wrong shape (all named).
        InputError: unreadable checkpoint or config.
    """
    if not isinstance(checkpoint, Mapping) and is_converted(checkpoint):
        return _load_converted(Path(checkpoint), device, dtype)
    state_dict = _official_state_dict(checkpoint)
    architecture = build_architecture(state_dict, config)
    converted = convert_official_state_dict(state_dict, architecture)
    text = {k[len("text_encoder.") :]: v for k, v in converted.items() if k.startswith("text_encoder.")}
    nets = {k: v for k, v in converted.items() if not k.startswith("text_encoder.")}
    meta = torch.device(device).type == "meta"
    networks = _build(architecture)
    # CLIP runs once, in fp32 on the CPU, for the empty prompt's context; it is not kept
    with torch.device("meta" if meta else "cpu"):
        text_encoder = build_text_encoder(architecture)
    _load_into(text_encoder, text, "meta" if meta else "cpu", torch.float32, "CLIP text encoder")
    nets["context"] = networks.context if meta else encode_empty_prompt(text_encoder.eval())
    _load_into(networks, nets, device, dtype, "X-Portrait checkpoint")
    return networks.eval().requires_grad_(False)


def _load_converted(folder: Path, device, dtype) -> XPortraitNetworks:
    meta = json.loads((folder / CONVERTED_CONFIG).read_text())
    if meta.get("format") != CONVERTED_FORMAT or meta.get("version") != CONVERTED_VERSION:
        raise CheckpointError(
            f"{folder}: not a converted X-Portrait folder of version {CONVERTED_VERSION}",
            "convert it again with `xportrait download-weights`",
        )
    architecture = Architecture.from_dict(meta["architecture"])
    networks = _build(architecture)
    target = "cpu" if torch.device(device).type == "meta" else device
    with safe_open(str(folder / CONVERTED_WEIGHTS), framework="pt", device=str(target)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    _load_into(networks, tensors, device, dtype, str(folder / CONVERTED_WEIGHTS))
    return networks.eval().requires_grad_(False)


def convert_checkpoint(
    checkpoint: Checkpoint,
    output_dir: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Convert an official checkpoint once into a fast-loading folder (diffusers-style layout, safetensors).

    The folder holds ``config.json`` (architecture, dtype) and ``networks.safetensors`` (every network
    plus the empty prompt's context; the CLIP encoder itself is not needed again), parameters in
    ``dtype`` and buffers (position tables, context) in float32. It is built under a temporary name
    beside ``output_dir`` (:func:`xportrait_cli.files.atomic_write`) and renamed into place when
    complete, replacing an older folder there.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError, InputError: as :func:`load_networks`.
    """
    output_dir = Path(output_dir)
    networks = load_networks(checkpoint, config=config, device="cpu", dtype=torch.float32)
    buffers = {name for name, _ in networks.named_buffers()}  # pe tables, context: kept in fp32
    tensors = {
        k: v.detach().to(torch.float32 if k in buffers else dtype).contiguous()
        for k, v in networks.state_dict().items()
    }
    meta = {
        "format": CONVERTED_FORMAT,
        "version": CONVERTED_VERSION,
        "dtype": str(dtype).removeprefix("torch."),
        "architecture": networks.architecture.to_dict(),
    }
    with atomic_write(output_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / CONVERTED_WEIGHTS))
        (tmp / CONVERTED_CONFIG).write_text(json.dumps(meta, indent=1))
    return output_dir
