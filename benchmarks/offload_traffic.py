"""Host↔device weight traffic per denoising step of each offloading strategy (counted, not timed).

Which offloading moves the fewest bytes for the device memory it saves (issue #17)? Strategies, on
the components of :class:`~xportrait_cli.pipeline.XPortraitPipeline` (``unet``, ``reference_net``,
``global_controlnet``, ``local_controlnet``, ``vae``):

- ``per-phase (removed)``: xportrait's own offload before #17 (``XPortraitNetworks.enable_offload``
  + ``use``: one phase's networks on the device: reference net, the two ControlNets, UNet or VAE),
  kept to show why it was replaced;
- ``accelerate …``: diffusers ``enable_model_cpu_offload``, i.e. accelerate's
  ``cpu_offload_with_hook`` chained along a ``model_cpu_offload_seq`` (a model is moved to the
  device when called and only the *previous* model of the sequence is moved back), components off
  the sequence hooked alone, as ``DiffusionPipeline.enable_model_cpu_offload`` does;
- ``group …``: diffusers ``apply_group_offloading`` on each component, ``block_level`` (one block a
  group) and ``leaf_level``, without and with ``use_stream`` (prefetch of the next group; the pinned
  CPU copy is kept, so offloading copies nothing back). ``leaf_level`` + stream is what
  ``pipe.enable_offload`` applies (:mod:`xportrait_cli.pipeline.offload`).

How it is counted. There is no GPU here, so nothing is timed: the golden tiny model
(``../shared/golden/tiny_xportrait.th``, the official layout with narrower widths, so every tensor
has the full-size model's name; :func:`~xportrait_cli.pipeline.load_pipeline`) runs the real
pipeline on the CPU (64², 48 frames, num_mix 4, guidance 5 in separate passes, 2 DDIM steps,
``reference_mode`` shared and per-frame), called directly, with each strategy's real hooks installed,
and the functions that move weights are replaced by a counter: accelerate's ``module.to`` from its
hooks, diffusers' ``ModuleGroup.onload_``/``offload_``. A :class:`Ledger` tracks which tensors are on
the "device" (on the CPU a move is a no-op, so residency cannot be read from ``tensor.device``) and
adds, for each tensor whose residency changes, its byte count in the full-size model (the same name
in the meta-device pipeline of ``flops.meta_networks``, 2 bytes an element: fp16).

The ``no offload`` run (every weight on the device) records the component calls (forward pre-hooks;
the VAE's ``encoder``/``decoder``, as its ``encode``/``decode`` call ``_hf_hook.pre_forward``
instead of ``forward``; every other component, the reference net included, runs through its own
``forward``). The per-phase and accelerate rows are replays of that sequence: per-phase, before each
call the resident networks of other phases are moved out and the called one's phase moved in, each
whole; accelerate, its ``CpuOffload.pre_forward`` fires, reading residency from the ledger where it
reads ``next(module.parameters()).device``.

``misses``: weight uses (torch function calls, watched by a ``TorchFunctionMode``) of a tensor that
is not on the device at that moment: on a GPU each is a device-mismatch error, so a strategy with
misses does not work as installed. Not uses: metadata reads, and ``.to`` (its result is made a copy,
as on a GPU). Before #17 ``block_level`` missed (the UNets were walked block by block, so the
forwards that onload a block's group never ran); now every component and block runs through its
``forward`` and it has none, but moves more and holds 30× more than ``leaf_level``. ``peak`` is the
most weight bytes on the device at once, in the full-size model (add activations:
:mod:`xportrait_cli.pipeline.memory`). Activations, latents, hints and ControlNet residuals are not
counted: they are the same for every strategy. "Per step" is the second step (the first one also
moves the VAE out); steps after it repeat it.

Assumptions: the full-size model is the official one in fp16 (SD-1.5 widths); a move of a module
moves all its parameters and buffers; accelerate's hooks fire once per component call;
``offload_to_disk_path`` and ``record_stream`` are off; the CPU copies a stream keeps are pinned.

Cross-check by hand (per-phase, shared reference, 4 windows a step, fp16): main UNet with motion
modules U = 2.56 GB, reference net R = 1.72 GB, ControlNets C = 2 × 0.72 GB. A step switches U→R
(U out, R in), R→C, C→U, then (U→C, C→U) for each of the 3 other windows: device→host
U + R + C + 3 (U + C) = 2.56 + 1.72 + 1.44 + 3 × 4.00 = 17.72 GB, host→device the same, 35.44 GB
in all, as printed. Leaf-level group offloading onloads each component once per call:
R + 4 (C + 2 U) = 27.96 GB, plus 0.18 GB because the reference attention calls ``attn1.to_k`` and
``to_v`` twice in a conditional pass (its own tokens, then the bank), and the layer is offloaded
after the first: 28.14 GB printed; 28.24 GB with a stream, whose prefetch copies ``to_out`` again
when the second ``to_v`` call prefetches it.

Usage: ``python benchmarks/offload_traffic.py [--frames 48] [--num-mix 4] [--steps 2] [--json]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from unittest import mock

import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("XPORTRAIT_SHARED", ROOT.parent / "shared"))
GB = 1e9
#: ``model_cpu_offload_seq`` variants: the components in first-call order, and the ControlNet
#: pipelines' layout (ControlNets off the chain: "they are iteratively called").
ACCELERATE_SEQS = {
    "accelerate, all in sequence": "vae->reference_net->global_controlnet->local_controlnet->unet",
    "accelerate, ControlNets off": "vae->reference_net->unet",
}
#: The removed per-phase offload's phases: the networks on the device together.
PHASES = (("reference_net",), ("global_controlnet", "local_controlnet"), ("unet",), ("vae",))
GROUP_OFFLOADS = {
    "group block_level": ("block_level", False),
    "group block_level + stream": ("block_level", True),
    "group leaf_level": ("leaf_level", False),
    "group leaf_level + stream": ("leaf_level", True),
}


def components_of(pipe) -> dict[str, nn.Module]:
    """The offloaded components of an :class:`XPortraitPipeline` (``unet``, ``reference_net``,
    ``global_controlnet``, ``local_controlnet``, ``vae``)."""
    return {name: getattr(pipe, name) for name in pipe.OFFLOADED}


def entry_modules(components: Mapping[str, nn.Module]) -> dict[str, list[nn.Module]]:
    """The modules whose forward marks a call of each component: the component itself, but a VAE's
    encoder and decoder (``encode``/``decode`` skip ``forward``)."""
    return {
        name: [module.encoder, module.decoder] if isinstance(module, AutoencoderKL) else [module]
        for name, module in components.items()
    }


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def full_size_bytes(components: Mapping[str, nn.Module]) -> dict[str, dict[str, int]]:
    """Bytes of every tensor of each component in fp16 (2 bytes a floating element), by name."""
    return {
        name: {
            key: t.numel() * (2 if t.is_floating_point() else t.element_size()) for key, t in _tensors(module)
        }
        for name, module in components.items()
    }


class Ledger:
    """Which weight tensors are on the device, and the full-size bytes moved and held.

    Args:
        components: ``{component name: module}`` being offloaded.
        full_bytes: :func:`full_size_bytes` of the full-size model (same tensor names).
    """

    def __init__(self, components: Mapping[str, nn.Module], full_bytes: Mapping[str, Mapping[str, int]]):
        self.owner: dict[int, tuple[str, int]] = {}
        for name, module in components.items():
            for key, tensor in _tensors(module):
                self.owner[id(tensor)] = (name, full_bytes[name][key])
        self.total = {name: sum(sizes.values()) for name, sizes in full_bytes.items()}
        self.resident: set[int] = set()
        self.h2d = self.d2h = self.now = self.peak = 0
        self.misses: Counter[str] = Counter()
        self.calls: list[str] = []
        self.segments: list[dict] = []
        self._start = (0, 0, 0)

    def on_device(self, module: nn.Module) -> bool:
        """Whether the first parameter of ``module`` is on the device (accelerate's residency test)."""
        return id(next(module.parameters())) in self.resident

    def onload(self, tensors, recopy: bool = False) -> None:
        """Host→device: every tensor of ``tensors`` not on the device yet (``recopy``: also those
        already there, copied again)."""
        for tensor in tensors:
            key = id(tensor)
            if key not in self.owner:
                continue
            size = self.owner[key][1]
            if key not in self.resident:
                self.resident.add(key)
                self.now += size
            elif not recopy:
                continue
            self.h2d += size
        self.peak = max(self.peak, self.now)

    def offload(self, tensors, copy_back: bool = True) -> None:
        """Device→host: tensors on the device leave it (``copy_back`` False: a CPU copy was kept)."""
        for tensor in tensors:
            key = id(tensor)
            if key in self.resident:
                self.resident.discard(key)
                size = self.owner[key][1]
                self.now -= size
                self.d2h += size if copy_back else 0

    def module_to(self, module: nn.Module, is_device: Callable[[object], bool]):
        """A counting stand-in for ``module.to(device)``: a move to the device when ``is_device(device)``,
        else to the host. Moves nothing (both are the CPU here)."""

        def to(*args, **kwargs):
            device = args[0] if args else kwargs.get("device")
            tensors = [t for _, t in _tensors(module)]
            if is_device(device):
                self.onload(tensors)
            else:
                self.offload(tensors)
            return module

        return to

    def mark(self, label: str) -> None:
        """Close the current segment of the run (``"encode"``, ``"step 1"``, …) and start the next."""
        h2d, d2h, misses = self._start
        resident = Counter(self.owner[key][0] for key in self.resident)
        self.segments.append(
            {
                "segment": label,
                "h2d_bytes": self.h2d - h2d,
                "d2h_bytes": self.d2h - d2h,
                "peak_bytes": self.peak,
                "misses": sum(self.misses.values()) - misses,
                "calls": self.calls,
                "resident_after": {
                    name: round(
                        sum(s for k, (n, s) in self.owner.items() if n == name and k in self.resident)
                        / self.total[name],
                        3,
                    )
                    for name in resident
                },
            }
        )
        self.calls = []
        self.peak = self.now
        self._start = (self.h2d, self.d2h, sum(self.misses.values()))


class WeightUses(TorchFunctionMode):
    """Counts, per component, uses of weight tensors that are off the device (``Ledger.misses``).

    Not uses: reading metadata (``.device``, ``.shape``, ``is_floating_point``: ``ModelMixin.dtype``),
    and ``.to`` (a copy to the device, e.g. of the UNet's ``empty_prompt_embeds`` buffer by
    ``prompt_embeds``), whose result is made a new tensor as on a GPU (on the CPU ``.to`` returns
    the weight itself, whose later uses would count).
    """

    NO_DATA = frozenset({"__get__", "is_floating_point", "dim", "size", "numel", "element_size"})

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ledger, name = self.ledger, getattr(func, "__name__", "")
        if name in self.NO_DATA:
            return func(*args, **kwargs)
        if name == "to":
            out = func(*args, **kwargs)
            return out.clone() if id(out) in ledger.owner else out
        for leaf in tree_leaves((args, kwargs)):
            key = id(leaf)
            if isinstance(leaf, torch.Tensor) and key in ledger.owner and key not in ledger.resident:
                ledger.misses[ledger.owner[key][0]] += 1
        return func(*args, **kwargs)


def run_pipeline(pipe, ledger: Ledger, inputs: dict, reference_mode: str, steps: int) -> None:
    """One real call of ``pipe`` with segment marks: ``encode``, ``step 1`` … ``step S``, ``decode``;
    each entry-module call is appended to ``ledger.calls``."""
    hooks = []
    for name, modules in entry_modules(components_of(pipe)).items():
        for module in modules:
            hooks.append(module.register_forward_pre_hook(lambda *_, name=name: ledger.calls.append(name)))
    denoise_step = pipe.denoise_step

    def step(latents, step_index, **kwargs):
        if step_index == 0:
            ledger.mark("encode")
        state = denoise_step(latents, step_index, **kwargs)
        ledger.mark(f"step {step_index + 1}")
        return state

    pipe.denoise_step = step
    try:
        with WeightUses(ledger):
            pipe(
                inputs["source"],
                inputs["frames"],
                num_inference_steps=steps,
                num_mix=inputs["num_mix"],
                reference_mode=reference_mode,
            )
        ledger.mark("decode")
    finally:
        del pipe.denoise_step
        for hook in hooks:
            hook.remove()


def count_resident(pipe, ledger: Ledger, inputs: dict, reference_mode: str, steps: int) -> None:
    """No offload: every weight moved to the device once (segment ``load``), then the pipeline."""
    for module in components_of(pipe).values():
        ledger.onload(t for _, t in _tensors(module))
    ledger.mark("load")
    run_pipeline(pipe, ledger, inputs, reference_mode, steps)


def replay(ledger: Ledger, recorded: list, before_call: Callable[[str], None]) -> None:
    """Call ``before_call(component name)`` at each call of the ``recorded`` segments, marked as recorded."""
    for segment in recorded:
        for name in segment["calls"]:
            before_call(name)
            ledger.calls.append(name)
        ledger.mark(segment["segment"])


def replay_per_phase(components: Mapping[str, nn.Module], ledger: Ledger, recorded: list) -> None:
    """The removed per-phase offload (``XPortraitNetworks.enable_offload`` + ``use``): before each
    call, the networks of other phases on the device leave it, then those of the called one's phase
    (:data:`PHASES`) not there come in, each moved whole."""
    phase_of = {name: phase for phase in PHASES for name in phase}

    def use(called: str) -> None:
        phase = phase_of[called]
        for name, module in components.items():
            if name not in phase:
                ledger.offload(t for _, t in _tensors(module))
        for name in phase:
            ledger.onload(t for _, t in _tensors(components[name]))

    replay(ledger, recorded, use)


def replay_accelerate(components: Mapping[str, nn.Module], ledger: Ledger, seq: str, recorded: list) -> None:
    """``enable_model_cpu_offload``'s hooks (as ``DiffusionPipeline`` installs them for ``seq``),
    fired at each call of the ``recorded`` segments."""
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import CpuOffload, UserCpuOffloadHook

    device = torch.device("cpu")  # the execution device, told apart from the host by identity
    for module in components.values():
        module.to = ledger.module_to(module, lambda d: d is device)

    def pre_forward(self, module, *args, **kwargs):  # CpuOffload.pre_forward, residency from the ledger
        prev = self.prev_module_hook
        if isinstance(prev, UserCpuOffloadHook) and ledger.on_device(prev.model):
            prev.offload()
        if not ledger.on_device(module):
            module.to(self.execution_device)
        return args, kwargs

    rest, hook = dict(components), None
    for name in seq.split("->"):
        _, hook = cpu_offload_with_hook(rest.pop(name), device, prev_module_hook=hook)
    for module in rest.values():
        cpu_offload_with_hook(module, device)
    with mock.patch.object(CpuOffload, "pre_forward", pre_forward):
        replay(ledger, recorded, lambda name: components[name]._hf_hook.pre_forward(components[name]))


class _Stream:
    """Stands in for the CUDA stream of ``use_stream=True`` (refused for a CPU onload device)."""

    def synchronize(self) -> None:
        pass


def count_group(pipe, ledger: Ledger, inputs: dict, reference_mode: str, steps: int, kind, stream):
    """``apply_group_offloading`` on every component (the body of the public function, minus its
    refusal of a stream on the CPU), ``onload_``/``offload_`` counted, then the pipeline."""
    from diffusers.hooks import group_offloading as go

    def tensors(group):
        for module in group.modules:
            yield from module.parameters()
            yield from module.buffers()
        yield from group.parameters
        yield from group.buffers

    running = []  # the groups whose hook is in pre_forward
    pre_forward = go.GroupOffloadingHook.pre_forward

    def hook_pre_forward(hook, module, *args, **kwargs):
        running.append(hook.group)
        try:
            return pre_forward(hook, module, *args, **kwargs)
        finally:
            running.pop()

    def onload_(group):
        # On a stream ``onload_`` copies every tensor from the pinned copy, also one on the device
        # already, except where a prefetched group's hook calls it after finding ``params[0]`` off
        # the device (on the CPU that check always holds: the ledger's residency stands in for it).
        fallback = running and running[-1] is group and not group.onload_self
        ledger.onload(list(tensors(group)), recopy=group.stream is not None and not fallback)

    cpu = torch.device("cpu")
    with (  # patched before the hooks are made: they keep their bound pre_forward
        mock.patch.object(go.GroupOffloadingHook, "pre_forward", hook_pre_forward),
        mock.patch.object(go.ModuleGroup, "onload_", onload_),
        mock.patch.object(
            go.ModuleGroup, "offload_", lambda g: ledger.offload(list(tensors(g)), copy_back=g.stream is None)
        ),
    ):
        for module in components_of(pipe).values():
            config = go.GroupOffloadingConfig(
                onload_device=cpu,
                offload_device=cpu,
                offload_type=go.GroupOffloadingType(kind),
                non_blocking=stream,
                record_stream=False,
                low_cpu_mem_usage=True,  # no pinning on a CPU-only torch; moves the same bytes
                num_blocks_per_group=1 if kind == "block_level" else None,
                stream=_Stream() if stream else None,
                block_modules=getattr(module, "_group_offload_block_modules", None),
                exclude_kwargs=getattr(module, "_skip_keys", None),
            )
            go._apply_group_offloading(module, config)
        run_pipeline(pipe, ledger, inputs, reference_mode, steps)


def tiny_inputs(frames: int, num_mix: int) -> dict:
    """The golden case's source portrait and its first ``frames`` hints (repeated when fewer)."""
    from safetensors.torch import load_file

    from xportrait_cli.pipeline import TensorFrames

    case = load_file(str(SHARED / "golden" / "case_a.safetensors"))
    pick = [i % case["inputs/conditions"].shape[0] for i in range(frames)]
    return {
        "source": case["inputs/source"],
        "frames": TensorFrames(case["inputs/conditions"][pick], case["inputs/local"][pick]),
        "num_mix": num_mix,
    }


def run(frames: int = 48, num_mix: int = 4, steps: int = 2, modes=("shared", "per-frame")) -> dict:
    """Count every strategy in each reference mode of ``modes``; returns a JSON-able dict (the
    reported ``step`` of each row is the second step, the first when ``steps`` is 1)."""
    from flops import meta_networks

    from xportrait_cli.pipeline import load_pipeline

    torch.set_num_threads(1)
    full = full_size_bytes(components_of(meta_networks()))
    golden = SHARED / "golden"
    tiny = load_pipeline(golden / "tiny_xportrait.th", config=golden / "tiny_config.yaml")
    inputs = tiny_inputs(frames, num_mix)
    sizes = {name: sum(s.values()) for name, s in full.items()}
    result = {"frames": frames, "num_mix": num_mix, "steps": steps, "component_bytes": sizes, "modes": {}}
    for mode in modes:
        ledger = Ledger(components_of(pipe := copy.deepcopy(tiny)), full)
        count_resident(pipe, ledger, inputs, mode, steps)
        runs = {"no offload": ledger}
        recorded = ledger.segments
        ledger = Ledger(components := components_of(copy.deepcopy(tiny)), full)
        replay_per_phase(components, ledger, recorded)
        runs["per-phase (removed)"] = ledger
        for label, seq in ACCELERATE_SEQS.items():
            ledger = Ledger(components := components_of(copy.deepcopy(tiny)), full)
            replay_accelerate(components, ledger, seq, recorded)
            runs[label] = ledger
        for label, (kind, stream) in GROUP_OFFLOADS.items():
            ledger = Ledger(components_of(pipe := copy.deepcopy(tiny)), full)
            count_group(pipe, ledger, inputs, mode, steps, kind, stream)
            runs[label] = ledger
        result["modes"][mode] = {
            label: {
                "segments": ledger.segments,
                "misses": dict(ledger.misses),
                "step": next(s for s in ledger.segments if s["segment"] == f"step {min(steps, 2)}"),
                "peak_bytes": max(s["peak_bytes"] for s in ledger.segments),
            }
            for label, ledger in runs.items()
        }
    return result


def report(result: dict) -> str:
    """The table: per strategy, GB moved in one steady denoising step and the peak of weights held."""
    sizes = ", ".join(f"{k} {v / GB:.2f}" for k, v in result["component_bytes"].items())
    lines = [
        f"Weight traffic per denoising step, full-size fp16 model (GB: {sizes}), "
        f"{result['frames']} frames, num_mix {result['num_mix']}, guidance in separate passes",
    ]
    for mode, rows in result["modes"].items():
        lines.append(f"  reference_mode {mode}:")
        header = f"{'host→dev':>9}{'dev→host':>9}{'total':>8}{'peak':>7}  misses  resident after"
        lines.append(f"    {'strategy':<30}{header}")
        for label, row in rows.items():
            step = row["step"]
            misses = step["misses"]
            after = step["resident_after"]
            resident = ", ".join(f"{k} {v:.0%}" if v < 1 else k for k, v in after.items())
            if len(after) == len(result["component_bytes"]) and min(after.values()) == 1:
                resident = "all"
            lines.append(
                f"    {label:<30}{step['h2d_bytes'] / GB:>9.2f}{step['d2h_bytes'] / GB:>9.2f}"
                f"{(step['h2d_bytes'] + step['d2h_bytes']) / GB:>8.2f}{row['peak_bytes'] / GB:>7.2f}"
                f"{misses:>8}  {resident or '-'}"
            )
        missed = {k: r["misses"] for k, r in rows.items() if r.get("misses")}
        for label, per in missed.items():
            lines.append(
                f"    misses of {label}, whole run: " + ", ".join(f"{k} {v}" for k, v in per.items())
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (``--json``: the raw result, every segment of every run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--num-mix", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps run (the 2nd is reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.frames, args.num_mix, args.steps)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
