"""Official X-Portrait checkpoint → the state dicts of the pipeline's components, strictly.

The SD parts go through diffusers' own LDM converters (``convert_ldm_unet_checkpoint``,
``convert_controlnet_checkpoint``, ``convert_ldm_vae_checkpoint``); only what X-Portrait adds is
converted here as pure ``dict -> dict`` re-prefixing: the motion modules and the appearance net.
Official key layout: spec §2 and ``reference/xportrait_state_dict_keys.tsv``.

Strictness (the official loader's ``strict=False`` silently loaded nothing on a wrong prefix): every
source tensor must be consumed by some target key or be on :data:`IGNORED` (schedule buffers, the
appearance net's unused hint encoder, CLIP ``position_ids``), and every target must be filled with
the right shape; otherwise :class:`~xportrait_cli.errors.CheckpointError` names the keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)

from xportrait_cli.errors import CheckpointError
from xportrait_cli.models.architecture import UNET_PREFIX, Architecture, clip_prefix

#: Source keys that are deliberately not loaded.
IGNORED = [
    re.compile(
        r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
        r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
        r"|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2"
        r"|logvar)$"
    ),  # DDPM schedule buffers: recomputed in float64 (pipeline/schedule.py)
    re.compile(r"^appearance_control_model\.input_hint_block\."),  # never used by the official code
    re.compile(r"position_ids$"),  # CLIP buffer (transformers 4.x spelling)
]

_MOTION = re.compile(
    r"^model\.diffusion_model\.(input|output)_blocks_motion_module\.(\d+)\.0\.temporal_transformer\.(.+)$"
)

Converter = Callable[[dict, dict], dict]


def _sub(state_dict: Mapping[str, torch.Tensor], prefix: str, new_prefix: str = "", drop=None) -> dict:
    """Keys under ``prefix``, re-prefixed with ``new_prefix``; ``drop`` filters out keys (regex)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix) and not (drop and drop.search(key)):
            out[new_prefix + key[len(prefix) :]] = value
    return out


def _prefix(d: Mapping[str, torch.Tensor], prefix: str) -> dict:
    return {prefix + k: v for k, v in d.items()}


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], architecture: Architecture) -> dict:
    """Convert an official-format state dict to the components' key layout, each key prefixed with its
    component (``unet.``, ``reference_net.``, ``global_controlnet.``, ``local_controlnet.``, ``vae.``).

    Args:
        state_dict: official keys (``model.diffusion_model.*``, ``appearance_control_model.*``,
            ``pose_control_model.*``, ``local_pose_control_model.*``, ``first_stage_model.*``,
            ``cond_stage_model.transformer[.text_model].*``), real or meta tensors, any dtype.
        architecture: the configs the networks are built from.

    Returns:
        ``{target_key: tensor}`` with CLIP weights under ``text_encoder.`` (they are used once, to
        compute the empty prompt's embedding, and are not part of the pipeline).

    Raises:
        CheckpointError: some source tensors are neither converted nor ignored (names them).
    """
    unet_cfg, cn_cfg, vae_cfg = architecture.unet, architecture.controlnet, architecture.vae
    motion_free = re.compile(r"_motion_module\.")
    out: dict[str, torch.Tensor] = {}

    main = _sub(state_dict, UNET_PREFIX, UNET_PREFIX, drop=motion_free)
    out.update(_prefix(convert_ldm_unet_checkpoint(main, unet_cfg), "unet.unet."))
    for key, value in state_dict.items():
        match = _MOTION.match(key)
        if match:
            path, index, rest = match.groups()
            side = "down" if path == "input" else "up"
            out[f"unet.{side}_motion_modules.{index}.{rest}"] = value

    appearance = _sub(
        state_dict, "appearance_control_model.", UNET_PREFIX, drop=re.compile(r"input_hint_block\.")
    )
    out.update(_prefix(convert_ldm_unet_checkpoint(appearance, unet_cfg), "reference_net.unet."))
    for name, target in (
        ("pose_control_model.", "global_controlnet."),
        ("local_pose_control_model.", "local_controlnet."),
    ):
        # diffusers detects a bare ControlNet by `time_embed.0.weight`, so pass it un-prefixed
        net = _sub(state_dict, name)
        out.update(_prefix(convert_controlnet_checkpoint(net, cn_cfg), target))
    out.update(_prefix(convert_ldm_vae_checkpoint(_sub(state_dict, "first_stage_model."), vae_cfg), "vae."))
    clip = _sub(state_dict, clip_prefix(state_dict), drop=re.compile(r"position_ids$"))
    out.update(_prefix(clip, "text_encoder."))

    _check_consumed(state_dict, out)
    return out


def _root(tensor: torch.Tensor) -> int:
    base = tensor
    while getattr(base, "_base", None) is not None:
        base = base._base
    return id(base)


def _check_consumed(source: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]) -> None:
    used = {_root(t) for t in converted.values()}
    left = [k for k, t in source.items() if _root(t) not in used and not any(p.search(k) for p in IGNORED)]
    if left:
        raise CheckpointError(
            f"{len(left)} checkpoint tensors match no network: {_names(left)}",
            "the checkpoint is not in the official X-Portrait layout (check its key prefixes)",
        )


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_against(
    expected: Mapping[str, torch.Tensor],
    converted: Mapping[str, torch.Tensor],
    what: str,
    hint: str = "check the checkpoint and --model-config",
) -> None:
    """Raise :class:`CheckpointError` unless ``converted`` has exactly ``expected``'s keys and shapes."""
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    wrong = [
        f"{k} {tuple(converted[k].shape)}≠{tuple(expected[k].shape)}"
        for k in expected
        if k in converted and tuple(converted[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape: {_names(wrong)}")
    if problems:
        raise CheckpointError(
            f"{what} does not fit the networks: " + "; ".join(problems),
            hint,
        )
