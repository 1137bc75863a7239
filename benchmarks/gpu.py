"""GPU: seconds per frame per step, peak VRAM and MFU of the full-size model at 512², by setting.

Needs a CUDA device; without one it prints ``no CUDA device: skipped`` and exits 0. The full-size
networks (SD-1.5 widths, 3.07 B parameters, structure from the checkpoint's key list) are built
directly on the GPU with seeded random weights (PyTorch/diffusers default initialisation) — no
download. The pipeline then animates a random portrait with random hints for ``--frames`` frames
(32–64) and ``--steps`` requested steps (2 → 2 DDIM steps), once to warm up and once timed, for
each setting:

- ``bf16`` (baseline: bf16 weights, cond and uncond passes separate, default SDPA backend, eager,
  contiguous memory format, ControlNet reuse on) and ``fp16``;
- ``batch_guidance`` (cond + uncond in one batch of 32);
- SDPA backends: ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``, ``sdpa_math``;
- ``compile`` (``torch.compile`` of every ResNet block, transformer block and motion module);
- ``channels_last``;
- ``no_controlnet_reuse`` (ControlNets recomputed in every window, as officially);
- ``offload`` (weights in CPU memory, each network moved to the GPU for its phase);
- VAE decode of the N latents with chunk sizes 1, 4, 8, 16 (seconds per frame, peak VRAM).

MFU = model FLOPs of the run (counted with ``FlopCounterMode`` on the meta device, see
``benchmarks/flops.py``) / seconds / the card's dense bf16 peak (table below, or ``--peak-tflops``).
A setting that fails (e.g. a backend the card lacks) is reported with its error, not fatal.

``--smoke`` runs every setting on the CPU with the golden tiny model at 64² (to test this script
where no GPU exists; its figures mean nothing).

Usage: ``python benchmarks/gpu.py [--frames 48] [--steps 2] [--settings bf16 fp16 ...] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
    "V100": 125.0,  # fp16 (no bf16 on Volta)
    "T4": 65.0,  # fp16 (no bf16 on Turing)
}

SETTINGS = (
    "bf16",
    "fp16",
    "batch_guidance",
    "sdpa_flash",
    "sdpa_efficient",
    "sdpa_cudnn",
    "sdpa_math",
    "compile",
    "channels_last",
    "no_controlnet_reuse",
    "offload",
)
DECODE_CHUNKS = (1, 4, 8, 16)


def peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak from :data:`PEAK_BF16_TFLOPS` (longest matching name), or None."""
    matches = [k for k in PEAK_BF16_TFLOPS if k in name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def build_networks(device: torch.device, dtype: torch.dtype, smoke: bool):
    """Full-size networks with seeded random weights on ``device`` (``smoke``: the tiny golden model)."""
    from xportrait_cli.pipeline import XPortraitPipeline, load_pipeline

    if smoke:
        return load_pipeline(
            GOLDEN / "tiny_xportrait.th", config=GOLDEN / "tiny_config.yaml", device=device, dtype=dtype
        )
    from flops import meta_state_dict

    from xportrait_cli.models import build_architecture
    from xportrait_cli.models.loading import build_components
    from xportrait_cli.pipeline.schedule import official_scheduler

    architecture = build_architecture(meta_state_dict())
    torch.manual_seed(0)
    with torch.device(device):
        components = build_components(architecture)
    components["unet"].empty_prompt_embeds.normal_()  # stands in for the CLIP embedding of ""
    for module in components.values():
        module.to(dtype).eval().requires_grad_(False)
    return XPortraitPipeline(**components, scheduler=official_scheduler())


def random_inputs(frames: int, size: int, seed: int = 0):
    """A random portrait ``(1, 3, S, S)`` and :class:`TensorFrames` hints in [-1, 1] (CPU)."""
    from xportrait_cli.pipeline import TensorFrames

    g = torch.Generator().manual_seed(seed)
    source = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    global_hint = torch.rand(frames, 3, size, size, generator=g) * 2 - 1
    local_hint = torch.full_like(global_hint, -1.0)
    quarter = size // 4
    local_hint[..., quarter : 2 * quarter, quarter : 3 * quarter] = global_hint[
        ..., quarter : 2 * quarter, quarter : 3 * quarter
    ]
    return source, TensorFrames(global_hint, local_hint)


def compile_blocks(networks) -> None:
    """``torch.compile`` every ResNet block, transformer block and motion module in place."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    from xportrait_cli.models.motion_module import TemporalModule

    for module in (m for name in networks.OFFLOADED for m in getattr(networks, name).modules()):
        if isinstance(module, ResnetBlock2D | BasicTransformerBlock | TemporalModule):
            module.compile(dynamic=False)


def sdpa_context(backend: str | None):
    """A context selecting one SDPA backend (None: PyTorch's default choice)."""
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }[backend]
    )


def model_tflop(frames: int, ddim_steps: int, reuse: bool, size: int) -> float:
    """Denoising FLOPs (TFLOP) of one run, from the meta-device counts of ``benchmarks/flops.py``."""
    from flops import component_flops, meta_networks, schedule_flops

    global _COMPONENTS
    if _COMPONENTS is None:
        _COMPONENTS = component_flops(meta_networks(), size)
    r = schedule_flops(_COMPONENTS, frames, ddim_steps)
    step = r["tflop_per_step_ours"]
    if not reuse:
        cn_frame = _COMPONENTS["controlnets_16"] / 16 / 1e12
        step += (r["controlnet_frames_per_step_official"] - r["controlnet_frames_per_step_ours"]) * cn_frame
    return step * ddim_steps


_COMPONENTS: dict | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_setting(setting: str, args, device: torch.device, state: dict) -> dict:
    """Warm up, then time one denoising run of ``args.frames`` frames under ``setting``."""
    from xportrait_cli.pipeline.memory import ModelSize, estimate_peak
    from xportrait_cli.pipeline.timesteps import official_timesteps

    dtype = torch.float16 if setting == "fp16" else torch.bfloat16
    if args.smoke:
        dtype = torch.float32
    key = (dtype, setting in ("compile", "channels_last") and setting)
    if state.get("key") != key:  # rebuild only when weights or their layout change
        state.pop("networks", None)
        _reset_peak(device)
        networks = build_networks(device, dtype, args.smoke)
        if setting == "channels_last":
            for name in networks.OFFLOADED:
                getattr(networks, name).to(memory_format=torch.channels_last)
        if setting == "compile":
            compile_blocks(networks)
        state["networks"], state["key"] = networks, key
    networks = state["networks"]
    if setting == "offload":
        networks.enable_offload(device)
        torch.cuda.empty_cache()
    pipe = networks
    source, frames = state["inputs"]
    backend = setting.removeprefix("sdpa_") if setting.startswith("sdpa_") else None
    kwargs = dict(
        num_inference_steps=args.steps,
        batch_guidance=setting == "batch_guidance",
        reuse_controlnet=setting != "no_controlnet_reuse",
        output_type="latent",
        seed=0,
    )
    with sdpa_context(backend):
        pipe(source, frames, **kwargs)  # warm-up (cuDNN autotuning, compilation)
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        out = pipe(source, frames, **kwargs)
        _sync(device)
        seconds = time.perf_counter() - start
    if networks.offloaded:
        networks.disable_offload()
    ddim_steps = len(official_timesteps(args.steps))
    n = len(frames)
    estimate = estimate_peak(
        ModelSize.of(networks),
        size=args.size,
        batch_guidance=kwargs["batch_guidance"],
        offload=setting == "offload",
        decode_chunk_size=1,
    )
    result = {
        "seconds": seconds,
        "s_per_frame_step": seconds / (n * ddim_steps),
        "peak_vram_gb": _peak_gb(device),
        "estimated_peak_gb": estimate / 1e9,  # the memory plan's estimate, to check it against
        "finite": bool(torch.isfinite(out.latents).all()),
    }
    if not args.smoke:
        tflop = model_tflop(n, ddim_steps, kwargs["reuse_controlnet"], args.size)
        result["tflop"] = tflop
        result["tflops_achieved"] = tflop / seconds
        if args.peak_tflops:
            result["mfu"] = tflop / seconds / args.peak_tflops
    state["latents"] = out.latents
    return result


def run_decode(chunk: int, args, device: torch.device, state: dict) -> dict:
    """Seconds per frame and peak VRAM of decoding the N latents ``chunk`` frames at a time."""
    pipe = state["networks"]
    latents = state["latents"]
    for _ in pipe.decode_latents(latents[:chunk], chunk):  # warm-up
        pass
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in pipe.decode_latents(latents, chunk):
        pass
    _sync(device)
    seconds = time.perf_counter() - start
    return {"s_per_frame": seconds / latents.shape[0], "peak_vram_gb": _peak_gb(device)}


def run(args) -> dict:
    """Every requested setting in turn; returns a JSON-able dict (``{"skipped": ...}`` without CUDA)."""
    if args.smoke:
        device = torch.device("cpu")
        args.size = 64
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke)"
    args.peak_tflops = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    state = {"inputs": random_inputs(args.frames, args.size)}
    results = {
        "device": name,
        "peak_bf16_tflops": args.peak_tflops,
        "frames": args.frames,
        "steps": args.steps,
        "size": args.size,
        "settings": {},
        "decode": {},
    }
    for setting in args.settings:
        try:
            results["settings"][setting] = run_setting(setting, args, device, state)
        except Exception as exc:  # noqa: BLE001 - a setting the card lacks is a result, not a crash
            results["settings"][setting] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            state.pop("key", None)
        print(f"  {setting}: {results['settings'][setting]}", file=sys.stderr)
    if "latents" in state and "networks" in state:
        for chunk in args.decode_chunks:
            try:
                results["decode"][str(chunk)] = run_decode(chunk, args, device, state)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large chunk
                results["decode"][str(chunk)] = {
                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                }
    return results


def report(results: dict) -> str:
    """A table of :func:`run`'s result."""
    if "skipped" in results:
        return f"GPU benchmark: {results['skipped']}: skipped"
    lines = [
        f"GPU benchmark on {results['device']}: {results['frames']} frames at {results['size']}², "
        f"{results['steps']} steps (bf16 peak {results['peak_bf16_tflops']} TFLOP/s)",
        f"{'setting':>20} {'s/frame/step':>13} {'peak VRAM GB':>13} {'TFLOP/s':>8} {'MFU':>6}",
    ]
    for setting, r in results["settings"].items():
        if "error" in r:
            lines.append(f"{setting:>20} error: {r['error']}")
            continue
        vram = f"{r['peak_vram_gb']:.1f}" if r["peak_vram_gb"] is not None else "-"
        tflops = f"{r['tflops_achieved']:.0f}" if "tflops_achieved" in r else "-"
        mfu = f"{r['mfu']:.0%}" if "mfu" in r else "-"
        finite = "" if r["finite"] else "  (non-finite latents)"
        lines.append(f"{setting:>20} {r['s_per_frame_step']:>13.4f} {vram:>13} {tflops:>8} {mfu:>6}{finite}")
    for chunk, r in results["decode"].items():
        if "error" in r:
            lines.append(f"{'decode chunk ' + chunk:>20} error: {r['error']}")
            continue
        vram = f"{r['peak_vram_gb']:.1f}" if r["peak_vram_gb"] is not None else "-"
        lines.append(f"{'decode chunk ' + chunk:>20} {r['s_per_frame']:>13.4f} {vram:>13}  (s/frame)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="driving frames (32-64 suggested)")
    parser.add_argument("--steps", type=int, default=2, help="requested DDIM steps (2 gives 2)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--decode-chunks", type=int, nargs="+", default=list(DECODE_CHUNKS))
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: table)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model: test this script only")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the GPU benchmark and print its table; without CUDA print that it was skipped."""
    args = parse_args(argv)
    results = run(args)
    print(json.dumps(results, indent=1) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
