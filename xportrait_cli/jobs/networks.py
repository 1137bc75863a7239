"""Which networks a job runs, on which device and in which precision; loaded once per batch.

:func:`resolve_device` and :func:`resolve_dtype` turn the ``--device``/``--dtype`` options into
torch values; :func:`model_path` and :func:`lora_file` find the weights; :class:`NetworksCache`
loads the pipeline once per (weights, config, device, dtype, compile, LoRA) and places its networks
on the device as the job's memory plan says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xportrait_cli.jobs.spec import JobSpec
from xportrait_cli.pipeline import XPortraitPipeline
from xportrait_cli.pipeline.memory import ModelSize, release_cached_memory


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; any other name (``"cuda:1"``) as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` → fp32 on the CPU, :data:`~xportrait_cli.weights.registry.CUDA_DTYPE` (fp16) on CUDA:
    the precision ``download-weights`` converts to, so the default weights load without a cast."""
    from xportrait_cli.weights.registry import CUDA_DTYPE, torch_dtype

    if dtype == "auto":
        dtype = CUDA_DTYPE if device.type == "cuda" else "fp32"
    return torch_dtype(dtype)


def device_name(device: torch.device) -> str:
    """``"cuda:0 (NVIDIA H200)"`` for a CUDA device, else ``"cpu"`` (for logs and errors)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def model_path(spec: JobSpec) -> Path:
    """The weights this job uses: ``--model`` (a file, a converted folder, or a Hub repo id of one,
    downloaded into the hub cache), else the download cache.

    Raises:
        InputError: ``--model`` names neither an existing path nor a Hub repo, or a folder that is
            not a converted one.
        CheckpointError: the folder is in the old converted format.
        WeightsMissingError: no ``--model`` and nothing downloaded.
    """
    from xportrait_cli.pipeline.loading import check_format, resolve_folder
    from xportrait_cli.weights.registry import default_model_path

    path = resolve_folder(spec.options.model) if spec.options.model is not None else default_model_path()
    if path.is_dir():
        check_format(path)  # an old-format folder fails here, before any preprocessing
    return path


def lora_file(spec: JobSpec) -> Path | None:
    """The ``--lora`` file (a path, or the hub cache's copy of a repo id), or None."""
    if spec.options.lora is None:
        return None
    from xportrait_cli.models.lora import resolve_lora

    return resolve_lora(spec.options.lora)


class NetworksCache:
    """Loads the pipeline once per (weights, config, device, dtype) and reuses it across jobs.

    :meth:`get` loads into CPU memory; :meth:`place` then puts the networks where the job's memory
    plan says: all on the device, or offloaded (each layer copied to the device as it runs).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._networks: XPortraitPipeline | None = None
        self._device = torch.device("cpu")

    def get(
        self,
        model: Path,
        config: Path | None,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        lora: tuple[Path, float] | None = None,
    ) -> XPortraitPipeline:
        """The pipeline for these settings, loaded on first use (into CPU memory, or where the last
        :meth:`place` put them). ``compile`` wraps the denoising networks (main UNet, appearance net,
        ControlNets) with ``torch.compile`` (``Module.compile``); ``lora`` is a (file, scale) for the
        main UNet (:func:`xportrait_cli.models.lora.load_lora`)."""
        key = (str(model), str(config), str(device), str(dtype), compile, str(lora))
        if key != self._key:
            self._networks = None  # free the previous model first
            release_cached_memory(self._device)
            from xportrait_cli.pipeline.loading import load_pipeline

            networks = load_pipeline(model, config=config, device="cpu", dtype=dtype)
            if lora is not None:
                from xportrait_cli.models.lora import load_lora

                load_lora(networks.unet.unet, *lora)
            if compile:
                for name in ("unet", "reference_net", "global_controlnet", "local_controlnet"):
                    getattr(networks, name).compile()
            self._networks, self._key, self._device = networks, key, device
        return self._networks

    def resident_bytes(self) -> int:
        """Bytes of network weights now held on the device (they count as free for the next plan)."""
        nets = self._networks
        if nets is None or nets.offloaded or nets._execution_device.type != "cuda":
            return 0
        return sum(ModelSize.of(nets).weights.values())

    def place(self, offload: bool) -> XPortraitPipeline:
        """Put the loaded pipeline's networks on the device (``offload=False``) or offload them
        (:meth:`~xportrait_cli.pipeline.network_calls.NetworkCallsMixin.enable_offload`)."""
        nets = self._networks
        if offload and not nets.offloaded:
            nets.enable_offload(self._device)
        elif not offload:
            if nets.offloaded:
                nets.disable_offload()
            nets.to(self._device)
        return nets
