"""FLOPs per output frame at full scale: our schedule against the official one (no memory, no GPU).

The full-size networks (SD-1.5 widths, 3.07 B parameters) are built on the meta device from the
checkpoint's key list (``../shared/reference/xportrait_state_dict_keys.tsv``), so nothing is
allocated; ``torch.utils.flop_counter.FlopCounterMode`` counts each component's forward at 512²
(64² latents) from the shapes alone (a multiply-add counts 2).

Per denoising step and 16-frame window the official sampler runs (spec §5 "Speed"): the appearance
net on 16 copies of the reference, both ControlNets on 16 frames, the main UNet with the reference
bank (cond) and without (uncond). It also VAE-encodes the source twice per frame (one posterior
sample for x_T, one for the per-frame reference) and decodes every frame.

Ours: the appearance net once per step at batch 1 (shared reference; the cond UNet projects the
bank's keys/values once instead of 16 times), the ControlNets once per frame per step
(:class:`~xportrait_cli.pipeline.control_residuals.ControlResiduals`, counted on the real window
plans), the source encoded once, every frame decoded once.

Usage: ``python benchmarks/flops.py [--steps 30] [--num-mix 4] [--frames 60 1000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
KEYS_TSV = SHARED / "reference" / "xportrait_state_dict_keys.tsv"
TERA = 1e12


def meta_state_dict(path: Path = KEYS_TSV) -> dict[str, torch.Tensor]:
    """Meta tensors with the shape and dtype of every key of the official checkpoint."""
    state_dict = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        state_dict[key] = torch.empty(dims, dtype=getattr(torch, dtype.split(".")[-1]), device="meta")
    return state_dict


def meta_networks():
    """The full-size :class:`XPortraitPipeline` on the meta device (no memory)."""
    from xportrait_cli.pipeline import load_pipeline

    return load_pipeline(meta_state_dict(), device="meta")


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (no grad), counted from shapes."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def component_flops(networks, size: int = 512, window: int = 16) -> dict[str, float]:
    """FLOPs of each component call at ``size``² (keys ending in ``_16`` are per 16-frame window).

    Returns a dict of floats: ``reference_16`` / ``reference_1`` (appearance net at batch 16 / 1),
    ``controlnets_16`` (both ControlNets), ``hint_encoders_16`` (their conditioning embeddings, part
    of ``controlnets_16``), ``unet_cond_bank16`` / ``unet_cond_bank1`` (main UNet reading a per-frame
    / shared bank, residuals added), ``unet_uncond``, ``vae_encode_1``, ``vae_decode_1``.
    """
    h = size // 8
    meta = {"device": "meta"}
    x = torch.empty(window, 4, h, h, **meta)
    t = torch.full((window,), 500, dtype=torch.long, **meta)
    hint = torch.empty(window, 3, size, size, **meta)
    bank16 = networks.record_reference(x, t)
    bank1 = networks.record_reference(x[:1], t[:1])
    residuals = networks.controlnet_residuals(x, t, hint, hint)
    nets = networks
    flops = {
        "reference_16": count_flops(lambda: nets.record_reference(x, t)),
        "reference_1": count_flops(lambda: nets.record_reference(x[:1], t[:1])),
        "controlnets_16": count_flops(lambda: nets.controlnet_residuals(x, t, hint, hint)),
        "hint_encoders_16": count_flops(
            lambda: [
                c.controlnet_cond_embedding(hint) for c in (nets.global_controlnet, nets.local_controlnet)
            ]
        ),
        "unet_cond_bank16": count_flops(
            lambda: nets.predict_noise(x, t, window_length=window, bank=bank16, residuals=residuals)
        ),
        "unet_cond_bank1": count_flops(
            lambda: nets.predict_noise(x, t, window_length=window, bank=bank1, residuals=residuals)
        ),
        "unet_uncond": count_flops(lambda: nets.predict_noise(x, t, window_length=window)),
        "vae_encode_1": count_flops(lambda: nets.vae.encode(torch.empty(1, 3, size, size, **meta))),
        "vae_decode_1": count_flops(lambda: nets.vae.decode(torch.empty(1, 4, h, h, **meta))),
    }
    return {k: float(v) for k, v in flops.items()}


def controlnet_frames_per_step(num_frames: int, num_mix: int, offset: int = 0) -> tuple[int, int]:
    """(frames through the ControlNets per step with reuse, official count) on the real window plan."""
    from xportrait_cli.pipeline.control_residuals import ControlResiduals
    from xportrait_cli.pipeline.windows import window_plan

    plan = window_plan(num_frames, offset % num_frames, num_mix)

    def compute(frames):
        z = torch.zeros(len(frames), 1)
        return [z], z

    controls = ControlResiduals(plan, compute)
    for indices in plan:
        controls(indices)
    return controls.computed, sum(len(w) for w in plan)


def schedule_flops(
    comp: dict[str, float], num_frames: int, steps: int = 31, num_mix: int = 4, window: int = 16
) -> dict[str, float]:
    """Whole-job FLOPs for ``num_frames`` output frames, ours and official, and per output frame."""
    from xportrait_cli.pipeline.windows import window_plan

    windows = len(window_plan(num_frames, 0, num_mix))
    cn_ours, cn_official = controlnet_frames_per_step(num_frames, num_mix)
    cn_frame = comp["controlnets_16"] / window
    official_window = (
        comp["reference_16"] + comp["controlnets_16"] + comp["unet_cond_bank16"] + comp["unet_uncond"]
    )
    official_step = windows * official_window
    ours_step = (
        comp["reference_1"] + cn_ours * cn_frame + windows * (comp["unet_cond_bank1"] + comp["unet_uncond"])
    )
    official = steps * official_step + num_frames * (2 * comp["vae_encode_1"] + comp["vae_decode_1"])
    ours = steps * ours_step + comp["vae_encode_1"] + num_frames * comp["vae_decode_1"]
    no_reuse = ours + steps * (cn_official - cn_ours) * cn_frame  # shared reference only
    assert cn_official == windows * window
    return {
        "frames": num_frames,
        "steps": steps,
        "windows_per_step": windows,
        "controlnet_frames_per_step_ours": cn_ours,
        "controlnet_frames_per_step_official": cn_official,
        "tflop_per_step_ours": ours_step / TERA,
        "tflop_per_step_official": official_step / TERA,
        "tflop_total_ours": ours / TERA,
        "tflop_total_official": official / TERA,
        "tflop_per_frame_ours": ours / num_frames / TERA,
        "tflop_per_frame_official": official / num_frames / TERA,
        "ratio": ours / official,
        "ratio_without_controlnet_reuse": no_reuse / official,
    }


def run(frames: list[int] = (60, 1000), steps: int = 30, num_mix: int = 4, size: int = 512) -> dict:
    """Count everything; returns a JSON-able dict (TFLOP figures, ratios, per-window shares)."""
    from xportrait_cli.pipeline.timesteps import official_timesteps

    torch.set_num_threads(1)
    networks = meta_networks()
    comp = component_flops(networks, size)
    ddim_steps = len(official_timesteps(steps))
    official_window = (
        comp["reference_16"] + comp["controlnets_16"] + comp["unet_cond_bank16"] + comp["unet_uncond"]
    )
    shares = {
        "reference_16": comp["reference_16"] / official_window,
        "controlnets_16": comp["controlnets_16"] / official_window,
        "unet_cond": comp["unet_cond_bank16"] / official_window,
        "unet_uncond": comp["unet_uncond"] / official_window,
    }
    per_n = {str(n): schedule_flops(comp, n, ddim_steps, num_mix) for n in frames}
    params = {
        name: sum(p.numel() for p in getattr(networks, name).parameters()) for name in networks.OFFLOADED
    }
    return {
        "size": size,
        "ddim_steps": ddim_steps,
        "num_mix": num_mix,
        "components_tflop": {k: v / TERA for k, v in comp.items()},
        "official_window_step_tflop": official_window / TERA,
        "official_window_shares": shares,
        "per_frames": per_n,
        "parameters": params,
        "controlnet_reuse_bytes_per_frame_fp16": _residual_bytes(networks, size) * 2,
    }


def _residual_bytes(networks, size: int) -> int:
    """Elements of one frame's ControlNet residuals (12 skips + middle) at ``size``²."""
    x = torch.empty(1, 4, size // 8, size // 8, device="meta")
    t = torch.full((1,), 500, dtype=torch.long, device="meta")
    hint = torch.empty(1, 3, size, size, device="meta")
    down, mid = networks.controlnet_residuals(x, t, hint, hint)
    return sum(d.numel() for d in down) + mid.numel()


def report(result: dict) -> str:
    """Human-readable summary of :func:`run`'s result."""
    c = result["components_tflop"]
    s = result["official_window_shares"]
    lines = [
        f"FLOPs at {result['size']}² (multiply-add = 2), {result['ddim_steps']} DDIM steps, "
        f"num_mix {result['num_mix']}",
        f"  official, one 16-frame window, one step: {result['official_window_step_tflop']:.1f} TFLOP "
        f"(reference net ×16 {s['reference_16']:.0%}, ControlNets {s['controlnets_16']:.0%}, "
        f"UNet cond {s['unet_cond']:.0%}, uncond {s['unet_uncond']:.0%})",
        f"  reference net: {c['reference_16']:.2f} (×16) / {c['reference_1']:.3f} (×1); "
        f"ControlNets ×16: {c['controlnets_16']:.2f} (hint encoders {c['hint_encoders_16']:.3f}); "
        f"UNet cond {c['unet_cond_bank16']:.2f} (bank ×16) / {c['unet_cond_bank1']:.2f} (bank ×1), "
        f"uncond {c['unet_uncond']:.2f}; VAE encode {c['vae_encode_1']:.2f}, decode {c['vae_decode_1']:.2f}"
        " TFLOP",
    ]
    for n, r in result["per_frames"].items():
        lines.append(
            f"  N={n:>5}: {r['windows_per_step']} windows/step, ControlNet frames/step "
            f"{r['controlnet_frames_per_step_ours']} (official {r['controlnet_frames_per_step_official']}); "
            f"per output frame ours {r['tflop_per_frame_ours']:.1f} vs official "
            f"{r['tflop_per_frame_official']:.1f} TFLOP = {r['ratio']:.3f}× "
            f"(shared reference alone: {r['ratio_without_controlnet_reuse']:.3f}×)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the FLOP comparison (``--json``: the raw result as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="requested DDIM steps (30 gives 31)")
    parser.add_argument("--num-mix", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 1000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.frames, args.steps, args.num_mix)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
