"""LoRA adapters on the main UNet (experimental): ``--lora PATH|repo-id`` and ``--lora-scale``.

The official README says X-Portrait is compatible with LCM-LoRA (``latent-consistency/lcm-lora-sdv1-5``)
but ships no code for it. Here a LoRA file is read with diffusers' ``lora_state_dict`` (which converts
kohya/A1111 key names to diffusers' PEFT layout) and injected into the main UNet's diffusers
``UNet2DConditionModel`` with ``load_lora_adapter`` (PEFT), then weighted with ``set_adapters``. The
appearance net, the ControlNets and the motion modules are left as they are. Loading is strict: every
LoRA tensor of the file must land in a LoRA layer of the UNet, or :class:`CheckpointError` names the
first ones that did not (diffusers/PEFT only warn).

Its quality with X-Portrait is unverified here (no reference results exist).
"""

from __future__ import annotations

import os
from pathlib import Path

from xportrait_cli.errors import CheckpointError, DownloadError, InputError, WeightsMissingError

#: The LCM-LoRA for SD-1.5 that the official README names, and its file.
LCM_LORA_REPO = "latent-consistency/lcm-lora-sdv1-5"
LORA_FILENAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "xportrait_lora"


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.endswith((".safetensors", ".bin", ".pt", ".pth"))


def resolve_lora(source: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The LoRA file ``source`` names: a file, a folder holding :data:`LORA_FILENAME` (or one
    ``.safetensors``), or a Hugging Face repo id whose :data:`LORA_FILENAME` is taken from the hub
    cache (``cache_dir``, else ``HF_HUB_CACHE`` …); a job never downloads (see
    :func:`download_lcm_lora`).

    Raises:
        InputError: a path that does not exist, or a folder without a single LoRA file.
        WeightsMissingError: a repo id whose file is not in the hub cache.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        files = (
            [path / LORA_FILENAME] if (path / LORA_FILENAME).is_file() else sorted(path.glob("*.safetensors"))
        )
        if len(files) != 1:
            raise InputError(
                f"{path}: no single LoRA file in this folder ({len(files)} .safetensors)",
                f"pass the file itself, or keep one {LORA_FILENAME} there",
            )
        return files[0]
    if _looks_like_path(source) or source.count("/") != 1:
        raise InputError(f"{source}: LoRA file not found", "check the path, or pass a repo id like org/name")
    from huggingface_hub import try_to_load_from_cache

    from xportrait_cli.weights.registry import hub_cache_dir

    cache = hub_cache_dir(cache_dir)
    found = try_to_load_from_cache(source, LORA_FILENAME, cache_dir=str(cache))
    if isinstance(found, str):
        return Path(found)
    if source == LCM_LORA_REPO:
        hint = "run `xportrait download-weights --lcm-lora`"
    else:
        hint = f"fetch it first: `hf download {source} {LORA_FILENAME}`"
    raise WeightsMissingError(f"LoRA {source} ({LORA_FILENAME}) is not in the hub cache {cache}", hint)


def download_lcm_lora(cache_dir: str | os.PathLike[str] | None = None, revision: str = "main") -> Path:
    """Fetch :data:`LCM_LORA_REPO`'s :data:`LORA_FILENAME` into the hub cache (``cache_dir``, else
    HF_HUB_CACHE …; HF_ENDPOINT and HF_TOKEN read now); returns the cached file. Raises
    :class:`DownloadError`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from xportrait_cli.weights.registry import hub_cache_dir

    try:
        return Path(
            hf_hub_download(
                LCM_LORA_REPO,
                LORA_FILENAME,
                revision=revision,
                cache_dir=str(hub_cache_dir(cache_dir)),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DownloadError(
            f"cannot download {LORA_FILENAME} from {LCM_LORA_REPO}: {first}",
            "check the network, HF_ENDPOINT and HF_TOKEN",
        ) from None


def _adapter_parameter(key: str, adapter: str) -> str:
    """``down_blocks.0…to_q.lora_A.weight`` → the PEFT parameter ``…to_q.lora_A.<adapter>.weight``."""
    parts = key.split(".")
    at = next(i for i, part in enumerate(parts) if part.startswith("lora_"))
    return ".".join([*parts[: at + 1], adapter, *parts[at + 1 :]])


def load_lora(unet, path: str | os.PathLike[str], scale: float = 1.0, adapter: str = ADAPTER_NAME) -> int:
    """Inject the LoRA file ``path`` into ``unet`` (a diffusers ``UNet2DConditionModel``) at ``scale``.

    Returns the number of UNet layers that got a LoRA. ``scale`` 0 gives the UNet's own output
    exactly (the LoRA branch adds ``0·B·A·x``).

    Raises:
        CheckpointError: the file is not a LoRA of a diffusers/kohya SD-1.5 UNet, holds tensors for
            another network (e.g. a text encoder, which X-Portrait does not run), or has tensors that
            do not fit this UNet (missing module or wrong shape).
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    try:
        state_dict, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(path))
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable LoRA file: {exc}", "pass a LoRA .safetensors"
        ) from None
    others = sorted(k for k in state_dict if not k.startswith("unet."))
    if others or not state_dict:
        raise CheckpointError(
            f"{path}: {len(others)} LoRA tensors are not for the UNet (e.g. {others[0]})"
            if others
            else f"{path}: no LoRA tensors found",
            "X-Portrait applies a LoRA to the main UNet only; pass a UNet LoRA",
        )
    try:
        unet.load_lora_adapter(state_dict, prefix="unet", network_alphas=alphas, adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: LoRA does not fit the UNet: {' '.join(str(exc).split())[:200]}",
                              "use a LoRA made for SD-1.5") from None  # fmt: skip
    params = dict(unet.named_parameters())
    dropped = [k for k in state_dict if _adapter_parameter(k.removeprefix("unet."), adapter) not in params]
    if dropped:
        raise CheckpointError(
            f"{path}: {len(dropped)} of {len(state_dict)} LoRA tensors match no UNet layer "
            f"(e.g. {dropped[0]})",
            "use a LoRA made for SD-1.5",
        )
    unet.set_adapters([adapter], [float(scale)])
    return len({k.rsplit(".lora_", 1)[0] for k in state_dict})
