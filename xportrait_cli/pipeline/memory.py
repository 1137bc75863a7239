"""The memory plan: how to split the work so a job fits the device it runs on.

Before denoising, :func:`plan_memory` estimates the peak device memory of each way to run a job and
takes the fastest that fits the free memory:

1. weights resident, cond and uncond guidance passes batched (32 frames per UNet call);
2. weights resident, the two guidance passes in sequence (16 frames per call; as officially);
3. weights offloaded: kept in CPU memory, each layer moved to the device as it runs (diffusers'
   group offloading, :meth:`~xportrait_cli.pipeline.network_calls.NetworkCallsMixin.enable_offload`),
   passes in sequence.

and decodes ``1``, ``2`` or ``4`` frames per VAE call, the most that fits. None fitting raises
:class:`~xportrait_cli.errors.OutOfMemoryPlanError` before any work starts. Explicit settings
(``--batch-guidance on|off``, ``--offload on|off``, ``--decode-chunk-size N``) are honoured; the plan
only fills in ``auto``. At run time, running out of memory anyway steps down the same ladder
(:meth:`MemoryPlan.fallback`; the runner resumes from the last step's checkpoint).

Estimates (for the official model at 512², SD-1.5 widths, 2-byte dtype, SDPA flash/memory-efficient
attention): one 16-frame UNet + ControlNet pass needs about 2.6 GB of activations; VAE decoding 16
frames at once peaks at 8.6 GB (0.54 GB a frame). Activations scale with the number of latent pixels
(``(size/512)²``), the model width (``/320``) and the dtype's bytes. To these come the weights
(counted exactly), the ControlNet residuals kept for overlapping windows (counted exactly from the
widths) and a fixed allowance for the CUDA allocator's fragmentation and kernels' workspaces.
Nothing depends on the number of frames: the pipeline keeps all N frames' latents in CPU memory and
moves one window at a time. ``benchmarks/gpu.py`` measures the real peaks.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from xportrait_cli.errors import OutOfMemoryPlanError
from xportrait_cli.pipeline.windows import WINDOW

GIB = 1024**3
#: Activations of one 16-frame pass (main UNet + both ControlNets) at 512², width 320, 2 bytes.
WINDOW_PASS_BYTES_512 = int(2.6e9)
#: Peak activations of VAE-decoding one 512² frame (8.6 GB for 16 frames), 2 bytes.
VAE_FRAME_BYTES_512 = int(8.6e9 / 16)
#: Allocator fragmentation, cuDNN/cuBLAS workspaces, the reference bank and small buffers.
ALLOWANCE_BYTES = int(0.75 * GIB)
#: VAE decode chunk sizes tried when ``decode_chunk_size`` is automatic, largest first.
DECODE_CHUNKS = (4, 2, 1)
#: ControlNet residuals kept for the next window: at most the overlap (``num_mix < WINDOW``) plus one
#: window.
RESIDUAL_FRAMES = (WINDOW - 1) + WINDOW


@dataclass(frozen=True)
class MemoryPlan:
    """How a job runs: guidance batching, weight offloading and VAE decode chunk.

    ``peak_bytes`` is the estimated device peak of the plan, ``budget_bytes`` the memory it had to
    fit (``None`` on the CPU, where nothing is planned).
    """

    batch_guidance: bool
    offload: bool
    decode_chunk_size: int
    peak_bytes: int = 0
    budget_bytes: int | None = None

    def describe(self) -> str:
        """One line for the log, e.g. ``"batched guidance, weights on the device, decode 4 frames at a
        time (est. 9.8 of 23.1 GiB)"``."""
        parts = [
            "batched guidance" if self.batch_guidance else "separate guidance passes",
            "weights offloaded to the CPU" if self.offload else "weights on the device",
            f"decode {self.decode_chunk_size} frame{'s' if self.decode_chunk_size != 1 else ''} at a time",
        ]
        text = ", ".join(parts)
        if self.budget_bytes is not None:
            text += f" (est. {self.peak_bytes / GIB:.1f} of {self.budget_bytes / GIB:.1f} GiB)"
        return text

    def fallback(self) -> MemoryPlan | None:
        """The next, smaller plan after running out of memory while denoising: separate guidance
        passes, then offloading; ``None`` when already at the bottom."""
        if self.batch_guidance:
            return replace(self, batch_guidance=False)
        if not self.offload:
            return replace(self, offload=True, decode_chunk_size=min(self.decode_chunk_size, 2))
        return None


@dataclass(frozen=True)
class ModelSize:
    """What the plan needs to know of the networks: weight bytes per network (as loaded, in the run
    dtype), the UNet's block widths and the run dtype's element size."""

    weights: Mapping[str, int]
    width: int
    dtype_bytes: int
    block_widths: tuple[int, ...] = (320, 640, 1280, 1280)

    @classmethod
    def of(cls, networks) -> ModelSize:
        """Measure the networks of an :class:`~xportrait_cli.pipeline.XPortraitPipeline` (on any device)."""
        weights = {
            name: sum(p.numel() * p.element_size() for p in getattr(networks, name).parameters())
            for name in networks.OFFLOADED
        }
        widths = tuple(networks.unet.config.unet_config["block_out_channels"])
        return cls(weights, widths[0], networks.dtype.itemsize, widths)

    def residual_bytes_per_frame(self, size: int) -> int:
        """Bytes of one frame's ControlNet residuals (12 skip + middle) at ``size``² pixels."""
        side = size // 8
        elements = self.block_widths[0] * side * side  # conv_in
        for i, width in enumerate(self.block_widths):
            res = side // 2**i
            elements += 2 * width * res * res  # two resnets
            if i < len(self.block_widths) - 1:
                elements += width * (res // 2) ** 2  # downsampler
        elements += self.block_widths[-1] * (side // 2 ** (len(self.block_widths) - 1)) ** 2  # middle
        return elements * self.dtype_bytes


def _scale(size: int, width: int, dtype_bytes: int) -> float:
    return (size / 512) ** 2 * (width / 320) * (dtype_bytes / 2)


def estimate_peak(
    model: ModelSize,
    *,
    size: int,
    batch_guidance: bool,
    offload: bool,
    decode_chunk_size: int,
) -> int:
    """Estimated peak device bytes of a job: the larger of the denoising and the decoding phase.

    Args:
        model: :meth:`ModelSize.of` the networks; size: output side in pixels.
        batch_guidance, offload, decode_chunk_size: the plan to estimate.
    """
    scale = _scale(size, model.width, model.dtype_bytes)
    w = model.weights
    residuals = RESIDUAL_FRAMES * model.residual_bytes_per_frame(size)
    window = WINDOW_PASS_BYTES_512 * scale * (2 if batch_guidance else 1)
    if offload:
        # group offloading holds about one layer (0.06 GB in fp16); the estimate keeps the largest
        # network, as for the per-phase offload it replaced, until it is measured on a GPU
        resident = max(w["unet"], w["reference_net"], w["global_controlnet"] + w["local_controlnet"])
        decode_resident = w["vae"]
    else:
        resident = decode_resident = sum(w.values())
    denoise = resident + window + residuals
    decode = decode_resident + VAE_FRAME_BYTES_512 * scale * decode_chunk_size
    return int(max(denoise, decode) + ALLOWANCE_BYTES)


def device_budget(device: torch.device, resident_bytes: int = 0) -> int | None:
    """Bytes a job may use on ``device``: free memory, plus memory PyTorch holds cached, plus
    ``resident_bytes`` already taken by networks this job will reuse. ``None`` for non-CUDA devices."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached + resident_bytes)


def plan_memory(
    model: ModelSize,
    *,
    size: int,
    budget_bytes: int | None,
    batch_guidance: str = "auto",
    offload: str = "auto",
    decode_chunk_size: int = 0,
    device_name: str = "the device",
) -> MemoryPlan:
    """The fastest plan that fits ``budget_bytes`` (see the module docstring).

    Args:
        model: sizes of the networks; size: output side (pixels).
        budget_bytes: :func:`device_budget`; ``None`` (CPU) plans nothing: guidance passes separate
            unless ``"on"`` (``auto`` is off: in sequence is faster there), offloading only when
            ``"on"``, ``decode_chunk_size`` or 2.
        batch_guidance, offload: ``"auto"``, ``"on"`` or ``"off"``.
        decode_chunk_size: frames per VAE decode call, 0 = automatic.
        device_name: for the error message (e.g. ``"cuda:0 (NVIDIA GeForce RTX 3060)"``).

    Raises:
        OutOfMemoryPlanError: not even the smallest allowed plan fits.
    """
    if budget_bytes is None:
        return MemoryPlan(batch_guidance == "on", offload == "on", decode_chunk_size or 2)
    guidance = {"on": [True], "off": [False]}.get(batch_guidance, [True, False])
    offloads = {"on": [True], "off": [False]}.get(offload, [False, True])
    chunks = [decode_chunk_size] if decode_chunk_size else list(DECODE_CHUNKS)
    smallest = None
    for off in offloads:
        for batched in guidance:
            for chunk in chunks:
                plan = MemoryPlan(batched, off, chunk)
                peak = estimate_peak(
                    model,
                    size=size,
                    batch_guidance=batched,
                    offload=off,
                    decode_chunk_size=chunk,
                )
                plan = replace(plan, peak_bytes=peak, budget_bytes=budget_bytes)
                if peak <= budget_bytes:
                    return plan
                smallest = plan if smallest is None or peak <= smallest.peak_bytes else smallest
    hints = []
    if offload == "off":
        hints.append("allow offloading (--offload auto)")
    if batch_guidance == "on":
        hints.append("use --batch-guidance auto")
    hints += ["free memory on the device", f"lower --size (now {size})", "or run on another device"]
    raise OutOfMemoryPlanError(
        f"{device_name} has {budget_bytes / GIB:.1f} GiB free but this job needs about "
        f"{smallest.peak_bytes / GIB:.1f} GiB even with {replace(smallest, budget_bytes=None).describe()}",
        ", ".join(hints),
    )


def release_cached_memory(device: torch.device) -> None:
    """Return cached blocks to the device after an out-of-memory error (CUDA only; else nothing)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = [
    "GIB",
    "MemoryPlan",
    "ModelSize",
    "device_budget",
    "estimate_peak",
    "plan_memory",
    "release_cached_memory",
]
