"""`xportrait animate --dtype bf16|fp16` end to end on the CPU: the precisions every CUDA run uses.

The golden tiny model animates the official demo pair (real media, dlib landmarks, 64 px, 20 frames,
2 steps) through the console script's ``main()``; its final latents (kept with ``--keep-work``) are
compared with an fp32 run of the same job.

fp32 islands of the half-precision path (all already in the code, none added for these tests):

* timestep embedding: ``time_proj`` turns the integer timesteps into sinusoids in fp32 and only the
  result is cast (``models/unet.py``): fp16 cannot hold ``t·freq`` for t up to 999 exactly;
* the scheduler and the latents: the pipeline keeps all N frames' latents in fp32 and casts each
  window on the way in; every noise prediction is cast back to fp32 before guidance and the DDIM
  step (``pipeline_xportrait.py``), so the rounding of each step does not accumulate in half;
* GroupNorm, LayerNorm and the attention softmax run in the weights' dtype, their statistics and
  the SDPA softmax accumulated in fp32 by PyTorch's CPU and CUDA kernels — no island needed;
* the VAE decode runs in the weights' dtype; the uint8 conversion is done in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import decoded, run_main, tiny_cli_args, tiny_spec
from safetensors.torch import load_file

from xportrait_cli.jobs import run_job
from xportrait_cli.jobs.workdir import CHECKPOINT_NAME

STEPS, FRAMES = 2, 20

#: Relative error of the final latents against fp32, ``max|x - x32| / max|x32|``, measured on this
#: job: bf16 0.026, fp16 0.0031 (8-bit against 11-bit mantissas). The bounds leave 2x / 3x margin.
LATENT_TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
#: Mean absolute difference of the decoded uint8 frames against fp32, measured: bf16 2.8, fp16 2.1.
FRAME_TOLERANCE = 6.0


@pytest.fixture(scope="module")
def fp32_run(golden, media, tmp_path_factory):
    """The reference: the same job in fp32 (final latents, decoded frames)."""
    out = tmp_path_factory.mktemp("fp32") / "out.mp4"
    spec = tiny_spec(golden, media, out, num_inference_steps=STEPS, frames=FRAMES, dtype="fp32")
    run_job(spec, keep_work=True)
    return load_file(str(spec.work_dir / CHECKPOINT_NAME))["latents"], decoded(out)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_animate_in_half_precision_matches_fp32(
    dtype, fp32_run, golden, media, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out.mp4"
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "animate",
        str(media / "xportrait_source.png"),
        str(media / "xportrait_driving.mp4"),
        "-o",
        str(out),
        *tiny_cli_args(golden, STEPS),
        "--frames",
        str(FRAMES),
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--keep-work",
    )
    assert code == 0, err
    latents = load_file(str(tmp_path / "out.mp4.xportrait" / CHECKPOINT_NAME))["latents"]
    reference, reference_frames = fp32_run
    assert latents.shape == reference.shape == (FRAMES, 4, 8, 8)
    assert torch.isfinite(latents).all()
    rel = ((latents - reference).abs().max() / reference.abs().max()).item()
    assert 1e-4 < rel <= LATENT_TOLERANCE[dtype], rel  # the half run really ran in half, and is close
    frames = decoded(out)
    assert frames.shape == reference_frames.shape
    assert np.abs(frames.astype(int) - reference_frames.astype(int)).mean() <= FRAME_TOLERANCE
