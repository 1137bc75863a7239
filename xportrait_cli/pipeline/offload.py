"""Weight offloading through diffusers' group offloading: every layer on the device only while it runs.

Chosen by counting the weight bytes each strategy moves between host and device per denoising step
of the full-size fp16 model (``benchmarks/offload_traffic.py``; 48 frames, num_mix 4, guidance in
separate passes). Leaf-level group offloading with a CUDA stream moves 28.2 GB a step host→device and
nothing back (the pinned CPU copy is kept), and holds 0.06 GB of weights on the device; the per-phase
offload it replaced (``XPortraitNetworks.enable_offload``, removed) moves 17.7 GB each way (35.4 GB)
and holds the main UNet, 2.56 GB (per-frame reference: 33.4 against 45.8 GB). ``block_level`` works
(every network runs through its own ``forward``) but moves more (45.0 GB with a stream: the layers
outside the blocks are copied back) and holds 1.86 GB. accelerate's model offload
(``enable_model_cpu_offload``) moves less (15.0 GB) but keeps the UNet resident beside the next net
(4.27 GB), saving 1.6 of the 5.9 GB the weights take.

Without streams (a non-CUDA device) every layer is also copied back after it runs, twice the bytes;
that path exists so the hooks can be tested on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.hooks import HookRegistry, apply_group_offloading
from diffusers.hooks.group_offloading import (
    _GROUP_OFFLOADING,
    _LAYER_EXECUTION_TRACKER,
    _LAZY_PREFETCH_GROUP_OFFLOADING,
)
from torch import nn

_HOOKS = (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING)


def enable_group_offload(components: Mapping[str, nn.Module], device: str | torch.device) -> None:
    """Keep every component's weights in CPU memory and move each layer to ``device`` just before it
    runs (diffusers ``apply_group_offloading``, ``offload_type="leaf_level"``), prefetching the next
    layer on a side stream where ``device`` has streams (CUDA).

    Args:
        components: ``{component name: module}``, e.g. ``unet``, ``reference_net``,
            ``global_controlnet``, ``local_controlnet``, ``vae`` (moved to the CPU first).
        device: the execution device; inputs given to a component are moved there by its hooks.
    """
    device = torch.device(device)
    for module in components.values():
        module.to("cpu")
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
        )


def disable_group_offload(components: Mapping[str, nn.Module], device: str | torch.device) -> None:
    """Undo :func:`enable_group_offload`: remove the hooks and put every component on ``device``."""
    for module in components.values():
        registry = HookRegistry.check_if_exists_or_initialize(module)
        for name in _HOOKS:
            registry.remove_hook(name, recurse=True)
        module.to(device)


def is_group_offloaded(module: nn.Module) -> bool:
    """Whether any layer of ``module`` carries a group-offloading hook."""
    return any(
        getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(_GROUP_OFFLOADING)
        for m in module.modules()
    )
