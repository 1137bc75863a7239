"""Official checkpoints into X-Portrait's diffusers components, in memory and strictly.

:func:`read_checkpoint` reads the official ``.th`` pickle (``model_state-415001.th``) with
``torch.load(weights_only=True, mmap=True)`` — no code from a checkpoint is ever executed — as
``{'state_dict': ...}`` or a bare dict, or an official-layout ``.safetensors`` file.
:func:`components_from_checkpoint` builds the five networks from it (the converted folder, written by
:func:`xportrait_cli.pipeline.loading.convert_checkpoint`, is loaded by diffusers instead).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel
from safetensors import safe_open
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from xportrait_cli.errors import CheckpointError, InputError
from xportrait_cli.models.architecture import Architecture, build_architecture
from xportrait_cli.models.convert import check_against, convert_official_state_dict
from xportrait_cli.models.reference_net import ReferenceNet
from xportrait_cli.models.unet import XPortraitUNet

Checkpoint = str | os.PathLike | Mapping[str, torch.Tensor]
#: Token ids of the empty prompt "" for openai/clip-vit-large-patch14: BOS then EOS/padding to 77.
EMPTY_PROMPT_IDS = [49406] + [49407] * 76


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
            f"{path}: is a folder but not a converted X-Portrait folder (no model_index.json)",
            "pass the .th file or a folder made by `xportrait convert` / `xportrait download-weights`",
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


def build_components(architecture: Architecture) -> dict[str, nn.Module]:
    """The five networks of an architecture, uninitialised (build them under ``torch.device("meta")``):
    ``unet``, ``reference_net``, ``global_controlnet``, ``local_controlnet``, ``vae``."""
    return {
        "unet": XPortraitUNet(
            unet_config=architecture.unet,
            motion_num_attention_heads=architecture.motion_heads,
            prompt_length=len(EMPTY_PROMPT_IDS),
        ),
        "reference_net": ReferenceNet(unet_config=architecture.unet),
        "global_controlnet": ControlNetModel(**architecture.controlnet),
        "local_controlnet": ControlNetModel(**architecture.controlnet),
        "vae": AutoencoderKL(**architecture.vae),
    }


def prefixed_state_dict(components: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Every component's state dict under ``<component>.`` (the key names errors use)."""
    return {f"{name}.{k}": v for name, module in components.items() for k, v in module.state_dict().items()}


def _load_into(module: nn.Module, tensors: Mapping[str, torch.Tensor], device, dtype, what: str) -> None:
    """Assign ``tensors`` (keys and shapes already checked) to ``module``, each straight into ``dtype``
    on ``device`` (no staging copy); a tensor already in it stays in the mapped file. When those are
    the smaller part they are cloned, so that a few fp32 buffers (position tables, context) do not
    keep a whole mapped fp16 file resident beside fp32 copies."""
    if torch.device(device).type == "meta":
        return
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


def components_from_checkpoint(
    checkpoint: Checkpoint,
    *,
    config: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, nn.Module]:
    """Build the X-Portrait networks from an official checkpoint and load their weights strictly.

    The official layout (spec §2) is converted in memory (:mod:`.convert`); the CLIP text encoder
    runs once, in fp32 on the CPU, for the empty prompt's embedding (kept in the UNet's
    ``empty_prompt_embeds``) and is not kept.

    Args:
        checkpoint: official ``.th``/``.safetensors`` path, or an in-memory official state dict
            (meta tensors allowed with ``device="meta"``).
        config: official-schema model YAML (structure); default: the official SD-1.5 config. Widths
            always come from the checkpoint's shapes.
        device: where the weights go; ``"meta"`` builds and checks every key and shape without memory.
        dtype: weight dtype (fp32 on CPU; fp16/bf16 on CUDA — weights are cast, not autocast).

    Returns:
        ``{"unet", "reference_net", "global_controlnet", "local_controlnet", "vae"}`` in eval mode,
        ``requires_grad`` off.

    Raises:
        CheckpointError: keys missing, unexpected or of the wrong shape (all named, with their
            component prefix, e.g. ``unet.up_motion_modules.3…``).
        InputError: unreadable checkpoint or config.
    """
    state_dict = _official_state_dict(checkpoint)
    architecture = build_architecture(state_dict, config)
    converted = convert_official_state_dict(state_dict, architecture)
    text = {k[len("text_encoder.") :]: v for k, v in converted.items() if k.startswith("text_encoder.")}
    nets = {k: v for k, v in converted.items() if not k.startswith("text_encoder.")}
    meta = torch.device(device).type == "meta"
    with torch.device("meta"):
        components = build_components(architecture)
    # CLIP runs once, in fp32 on the CPU, for the empty prompt's embedding; it is not kept
    with torch.device("meta" if meta else "cpu"):
        text_encoder = build_text_encoder(architecture)
    check_against(text_encoder.state_dict(), text, "CLIP text encoder")
    _load_into(text_encoder, text, "meta" if meta else "cpu", torch.float32, "CLIP text encoder")
    embeds = "unet.empty_prompt_embeds"
    nets[embeds] = (
        components["unet"].empty_prompt_embeds if meta else encode_empty_prompt(text_encoder.eval())
    )
    check_against(prefixed_state_dict(components), nets, "X-Portrait checkpoint")
    for name, module in components.items():
        tensors = {k[len(name) + 1 :]: v for k, v in nets.items() if k.startswith(name + ".")}
        _load_into(module, tensors, device, dtype, name)
        module.eval().requires_grad_(False)
    return components


def encode_empty_prompt(text_encoder: CLIPTextModel) -> torch.Tensor:
    """CLIP ``last_hidden_state`` of the empty prompt, ``(1, 77, hidden)`` (causal mask only, no padding
    mask, as the official ``FrozenCLIPEmbedder``)."""
    ids = torch.tensor([EMPTY_PROMPT_IDS], device=text_encoder.device)
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state


def build_text_encoder(architecture: Architecture) -> CLIPTextModel:
    """A CLIP text encoder of the architecture's sizes (weights uninitialised until loaded)."""
    return CLIPTextModel(CLIPTextConfig(**architecture.text))
