"""Each X-Portrait network's forward at full size against the stock diffusers module, same process.

For one 16-frame window at each size (fp32, CPU), interleaved over ``--repeats`` rounds after a warm-up:

* ``unet``: our main UNet with its 20 motion modules (``XPortraitUNet``, block walk of
  ``models/unet.py``, reference processors idle) against a stock ``UNet2DConditionModel``;
* ``controlnet``: ``controlnet_residuals`` (both ControlNets and the sum of their residuals) against
  two calls of a stock ``ControlNetModel``;
* ``reference``: ``record_reference`` (the appearance net writing the bank) against a stock
  ``UNet2DConditionModel`` forward.

The stock modules share our weights (``load_state_dict(assign=True)``: no second copy) and keep
diffusers' default SDPA processors. The work differs by design (motion modules, the missing ``out``
head, a second ControlNet's residual sum), so each ratio is divided by the FLOP ratio counted by
``torch.utils.flop_counter`` on the meta device: ``overhead_vs_stock = (t_ours / t_stock) /
(flops_ours / flops_stock)``, 1.0 meaning equal cost per unit of work. ``--profile`` adds the top
operators of one profiled forward of each (``torch.profiler``, self CPU time).

Usage: ``python benchmarks/fullscale_forward.py FOLDER [--sizes 64 128] [--repeats 5] [-o out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

WINDOW = 16


def stock_copies(networks) -> tuple[UNet2DConditionModel, ControlNetModel]:
    """Stock diffusers UNet and ControlNet of our configs, sharing our weights (no copy)."""
    device = networks.unet.device
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(networks.unet.unet.config)
        controlnet = ControlNetModel.from_config(networks.global_controlnet.config)
    if device.type != "meta":
        unet.load_state_dict(networks.unet.unet.state_dict(), assign=True)
        controlnet.load_state_dict(networks.global_controlnet.state_dict(), assign=True)
    return unet.eval().requires_grad_(False), controlnet.eval().requires_grad_(False)


def calls(networks, stock_unet, stock_controlnet, size: int) -> dict[str, tuple]:
    """``{network: (ours(), stock())}`` for one window at ``size``² on the networks' device."""
    device, dtype = networks.unet.device, networks.unet.dtype
    gen = torch.Generator().manual_seed(0)
    side = size // 8
    x = torch.randn(WINDOW, 4, side, side, generator=gen).to(device, dtype)
    hint = (torch.rand(WINDOW, 3, size, size, generator=gen) * 2 - 1).to(device, dtype)
    t = torch.full((WINDOW,), 501, device=device)
    context = networks.unet.empty_prompt_embeds.expand(WINDOW, -1, -1)

    def stock_unet_call():
        return stock_unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    def stock_controlnets():
        for h in (hint, hint):
            stock_controlnet(x, t, encoder_hidden_states=context, controlnet_cond=h, return_dict=False)

    return {
        "unet": (lambda: networks.unet(x, t, window_length=WINDOW), stock_unet_call),
        "controlnet": (lambda: networks.controlnet_residuals(x, t, hint, hint), stock_controlnets),
        "reference": (lambda: networks.record_reference(x, t), stock_unet_call),
    }


def flop_ratios(size: int, networks=None) -> dict[str, dict[str, int]]:
    """FLOPs of ours and of the stock call per network, counted on ``networks`` (default: the
    full-size networks on the meta device)."""
    if networks is None:
        from flops import meta_networks

        networks = meta_networks()
    stock_unet, stock_controlnet = stock_copies(networks)
    out = {}
    for name, (ours, stock) in calls(networks, stock_unet, stock_controlnet, size).items():
        counts = []
        for fn in (ours, stock):
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                fn()
            counts.append(counter.get_total_flops())
        out[name] = {"flops_ours": counts[0], "flops_stock": counts[1]}
    return out


def profile_table(fn, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def time_size(networks, stock, size: int, repeats: int, profile: bool, flops_of=None) -> dict:
    """Interleaved timings and overhead per network at ``size``² (FLOPs counted on ``flops_of``, default
    the full-size networks on the meta device)."""
    results = {}
    flops = flop_ratios(size, flops_of)
    for name, (ours, stock_call) in calls(networks, *stock, size).items():
        seconds: dict[str, list[float]] = {"ours": [], "stock": []}
        with torch.no_grad():
            ours(), stock_call()  # warm-up (first-touch of the weights, allocator)
            for _ in range(repeats):
                for label, fn in (("ours", ours), ("stock", stock_call)):
                    start = time.perf_counter()
                    fn()
                    seconds[label].append(time.perf_counter() - start)
        f = flops[name]
        ratios = [o / s for o, s in zip(seconds["ours"], seconds["stock"], strict=True)]
        flop_ratio = f["flops_ours"] / f["flops_stock"]
        results[name] = {
            **f,
            "seconds_ours": seconds["ours"],
            "seconds_stock": seconds["stock"],
            "time_ratio_median": statistics.median(ratios),
            "flop_ratio": flop_ratio,
            "overhead_vs_stock": statistics.median(ratios) / flop_ratio,
            "overhead_vs_stock_of_minima": min(seconds["ours"]) / min(seconds["stock"]) / flop_ratio,
        }
        if profile:
            results[name]["profile_ours"] = profile_table(ours)
            results[name]["profile_stock"] = profile_table(stock_call)
        print(f"  forward {size}² {name}: overhead {results[name]['overhead_vs_stock']:.3f}", flush=True)
    return results


def run(folder: Path, sizes: list[int], repeats: int = 5, profile: bool = False) -> dict:
    """Load ``folder`` in fp32 on the CPU and time every network at every size."""
    from xportrait_cli.pipeline import load_pipeline

    networks = load_pipeline(folder, dtype=torch.float32)
    stock = stock_copies(networks)
    return {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "sizes": {str(s): time_size(networks, stock, s, repeats, profile) for s in sizes},
    }


def report(results: dict) -> str:
    head = f"{'forward':>8} {'network':>10} {'ours s':>8} {'stock s':>8} {'FLOP ratio':>10} {'overhead':>9}"
    lines = [head]
    for size, nets in results["sizes"].items():
        for name, r in nets.items():
            lines.append(
                f"{size + '²':>8} {name:>10} {statistics.median(r['seconds_ours']):>8.2f} "
                f"{statistics.median(r['seconds_stock']):>8.2f} {r['flop_ratio']:>10.3f} "
                f"{r['overhead_vs_stock']:>9.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a converted folder (download-weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    results = run(args.folder, args.sizes, args.repeats, args.profile)
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
