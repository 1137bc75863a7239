"""Network architecture: the official model config (YAML) plus the checkpoint's tensor shapes.

The official config ``config/cldm_v15_appearance_pose_local_mm.yaml`` is LDM "target/params" YAML
(spec §3.1). Its structure (channel multipliers, res blocks, attention levels, heads) comes from the
YAML — by default the official SD-1.5 values below — and the widths (``model_channels``,
``context_dim``, the VAE's ``ch``, every CLIP size) are read off the checkpoint's tensor shapes, so a
checkpoint always builds the networks its tensors fit. The diffusers configs are derived here rather
than with ``diffusers.loaders.single_file_utils.create_*_config_from_ldm``, whose ControlNet helper
does not accept this YAML (it looks for ``control_stage_config``) and whose UNet helper guesses an
image size from the checkpoint type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xportrait_cli.errors import CheckpointError, InputError

#: The official SD-1.5 values of the fields this module reads from the YAML.
OFFICIAL_UNET_PARAMS: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
}
OFFICIAL_MOTION_HEADS = 8
OFFICIAL_VAE_PARAMS: dict[str, Any] = {
    "z_channels": 4,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
}
OFFICIAL_SCALE_FACTOR = 0.18215
HINT_CHANNELS = 3

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")


@dataclass
class Architecture:
    """diffusers configs of the five X-Portrait networks and the latent scale factor.

    Attributes:
        unet: ``UNet2DConditionModel`` config (main UNet and appearance net).
        controlnet: ``ControlNetModel`` config (global and local motion ControlNets).
        vae: ``AutoencoderKL`` config.
        text: ``CLIPTextConfig`` keyword arguments.
        motion_heads: attention heads of each temporal module (8 officially).
        scale_factor: latent scale (0.18215).
    """

    unet: dict[str, Any]
    controlnet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    motion_heads: int = OFFICIAL_MOTION_HEADS
    scale_factor: float = OFFICIAL_SCALE_FACTOR


def read_model_config(path: str | Path | None) -> dict[str, Any]:
    """Read an official-schema model YAML into the fields used here (official defaults if None).

    Returns ``{"unet": {...}, "vae": {...}, "motion_heads": int, "scale_factor": float}``.

    Raises:
        InputError: the file is missing or not the official schema.
    """
    unet, vae = dict(OFFICIAL_UNET_PARAMS), dict(OFFICIAL_VAE_PARAMS)
    heads, scale = OFFICIAL_MOTION_HEADS, OFFICIAL_SCALE_FACTOR
    if path is None:
        return {"unet": unet, "vae": vae, "motion_heads": heads, "scale_factor": scale}
    path = Path(path)
    try:
        root = yaml.safe_load(path.read_text())
        params = root["model"]["params"]
        unet_params = params["unet_config"]["params"]
        vae_params = params["first_stage_config"]["params"]["ddconfig"]
    except FileNotFoundError:
        raise InputError(
            f"{path}: model config not found", "pass an existing YAML to --model-config"
        ) from None
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not an X-Portrait model config ({type(exc).__name__}: {exc})",
            "use the official config/cldm_v15_appearance_pose_local_mm.yaml schema",
        ) from None
    unet.update({k: unet_params[k] for k in OFFICIAL_UNET_PARAMS if k in unet_params})
    vae.update({k: vae_params[k] for k in OFFICIAL_VAE_PARAMS if k in vae_params})
    mm = unet_params.get("unet_additional_kwargs", {}).get("motion_module_kwargs", {})
    heads = int(mm.get("num_attention_heads", heads))
    scale = float(params.get("scale_factor", scale))
    return {"unet": unet, "vae": vae, "motion_heads": heads, "scale_factor": scale}


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise CheckpointError(
            f"checkpoint has no '{key}'",
            "is it an X-Portrait checkpoint (model_state-415001.th)? run `xportrait download-weights`",
        ) from None


def clip_prefix(state_dict: Mapping[str, Any]) -> str:
    """The CLIP key prefix this checkpoint uses (transformers 4.x ``text_model.`` level or 5.x)."""
    for prefix in CLIP_PREFIXES:
        if f"{prefix}embeddings.token_embedding.weight" in state_dict:
            return prefix
    raise CheckpointError(
        "checkpoint has no CLIP text encoder (cond_stage_model.transformer.*)",
        "is it an X-Portrait checkpoint (model_state-415001.th)?",
    )


def text_config_from_shapes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``CLIPTextConfig`` kwargs from the CLIP tensor shapes.

    Heads: ``hidden/64`` (ViT-L/14: 768 → 12) when the width is a multiple of 64, else ``hidden/16``
    (the tiny test models use 16-wide heads). Activation ``quick_gelu`` as in OpenAI CLIP.
    """
    prefix = clip_prefix(state_dict)
    vocab, hidden = _shape(state_dict, f"{prefix}embeddings.token_embedding.weight")
    positions = _shape(state_dict, f"{prefix}embeddings.position_embedding.weight")[0]
    intermediate = _shape(state_dict, f"{prefix}encoder.layers.0.mlp.fc1.weight")[0]
    layers = len(
        {
            k.split(".")[len(prefix.split(".")) + 1]
            for k in state_dict
            if k.startswith(f"{prefix}encoder.layers.")
        }
    )
    heads = hidden // 64 if hidden % 64 == 0 else max(1, hidden // 16)
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
        "hidden_act": "quick_gelu",
        "projection_dim": hidden,
    }


def build_architecture(state_dict: Mapping[str, Any], config: str | Path | None = None) -> Architecture:
    """diffusers configs for a checkpoint: structure from ``config`` (official YAML), widths from shapes.

    Args:
        state_dict: the official-format state dict (real, or meta tensors).
        config: official-schema YAML path, or None for the official SD-1.5 config.

    Raises:
        CheckpointError: a tensor the widths are read from is missing.
        InputError: ``config`` is missing or malformed.
    """
    cfg = read_model_config(config)
    u = cfg["unet"]
    u["model_channels"] = _shape(state_dict, f"{UNET_PREFIX}input_blocks.0.0.weight")[0]
    u["context_dim"] = _shape(
        state_dict, f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    )[1]
    widths = [u["model_channels"] * m for m in u["channel_mult"]]
    attention_levels = [2**i in u["attention_resolutions"] for i in range(len(widths))]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    common = {
        "in_channels": u["in_channels"],
        "down_block_types": down,
        "block_out_channels": widths,
        "layers_per_block": u["num_res_blocks"],
        "cross_attention_dim": u["context_dim"],
        "attention_head_dim": u["num_heads"],
        "use_linear_projection": bool(u["use_linear_in_transformer"]),
        "transformer_layers_per_block": u["transformer_depth"],
    }
    unet = {**common, "out_channels": u["out_channels"], "up_block_types": up, "sample_size": 64}
    controlnet = {**common, "conditioning_channels": HINT_CHANNELS}
    v = cfg["vae"]
    v["ch"] = _shape(state_dict, "first_stage_model.encoder.conv_in.weight")[0]
    vae = {
        "in_channels": v["in_channels"],
        "out_channels": v["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * len(v["ch_mult"]),
        "up_block_types": ["UpDecoderBlock2D"] * len(v["ch_mult"]),
        "block_out_channels": [v["ch"] * m for m in v["ch_mult"]],
        "latent_channels": v["z_channels"],
        "layers_per_block": v["num_res_blocks"],
        "scaling_factor": cfg["scale_factor"],
        "sample_size": 512,
    }
    return Architecture(
        unet=unet,
        controlnet=controlnet,
        vae=vae,
        text=text_config_from_shapes(state_dict),
        motion_heads=cfg["motion_heads"],
        scale_factor=cfg["scale_factor"],
    )
