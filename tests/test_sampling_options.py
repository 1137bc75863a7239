"""The official model's other sampling options and the single-pass guidance paths, on real media with the
golden tiny model: --init-video, --control-mode, --noised-reference, --guidance-scale 1 and
--guidance-interval (their golden parity is in test_golden.py, cases c1–c3)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from conftest import decoded, tiny_spec, write_manifest
from safetensors.torch import load_file

from xportrait_cli.errors import InputError
from xportrait_cli.image import load_portrait
from xportrait_cli.jobs import run_job
from xportrait_cli.jobs.fingerprint import job_fingerprint
from xportrait_cli.jobs.manifest import load_manifest
from xportrait_cli.jobs.workdir import CHECKPOINT_NAME
from xportrait_cli.pipeline import XPortraitPipeline
from xportrait_cli.pipeline.guidance import is_guided, step_position


class Stop(Exception):
    pass


def write_lossless(path, frames: np.ndarray, fps: int = 25):
    """``(n, H, W, 3)`` uint8 RGB as lossless H.264 RGB (decoded back bit for bit)."""
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"qp": "0"}
        for f in frames:
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(stream.encode())
    return path


def final_latents(result) -> torch.Tensor:
    """Latents after the last step, from a job run with ``keep_work=True``."""
    return load_file(str(result.output.with_name(result.output.name + ".xportrait") / CHECKPOINT_NAME))[
        "latents"
    ]


@pytest.fixture(scope="module")
def small_portrait(media, tmp_path_factory):
    """The portrait at 64 px as a PNG (uint8, so reading it back at 64 px is exact) and its array."""
    from PIL import Image

    rgb = np.round(load_portrait(media / "xportrait_source.png", 64) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("portrait") / "portrait64.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


@pytest.fixture(scope="module")
def portrait_video(small_portrait, tmp_path_factory):
    """The 64 px portrait repeated 20 times, lossless."""
    rgb = small_portrait[1]
    return write_lossless(tmp_path_factory.mktemp("init") / "portrait.mkv", np.repeat(rgb[None], 20, axis=0))


def test_init_video_of_the_portrait_repeated_matches_a_run_without(
    small_portrait, portrait_video, golden, media, tmp_path, tiny_pipe
):
    """Same draws by design; the init frames equal the portrait, so only the VAE's batch (16 frames
    instead of 1) rounds differently. No alignment (-2): dlib finds no face at 64 px."""

    def run(name, **options):
        spec = tiny_spec(golden, media, tmp_path / f"{name}.mp4", best_frame=-2, **options)
        return run_job(type(spec)(small_portrait[0], spec.driving, spec.output, spec.options), keep_work=True)

    plain, init = run("plain"), run("init", init_video=portrait_video)
    error = (final_latents(plain) - final_latents(init)).abs().max().item()
    assert error < 2e-4, error  # measured 5.7e-5 (|x| <= 35), the one-thread batch-size floor of case A
    pipe = tiny_pipe
    frames = [np.concatenate(list(pipe.decode_latents(final_latents(r), 4))) for r in (plain, init)]
    assert (
        np.abs(frames[0].astype(int) - frames[1].astype(int)).max() <= 1
    )  # (the MP4s' H.264 may differ more)

    # another init video (the portrait mirrored) moves the result: the option is not ignored
    mirrored = write_lossless(tmp_path / "mirrored.mkv", decode_all(portrait_video)[:, :, ::-1])
    other = run("mirrored", init_video=mirrored)
    assert (final_latents(other) - final_latents(plain)).abs().max().item() > 1e-2


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_short_init_video_is_one_clear_error(portrait_video, golden, media, tmp_path):
    short = write_lossless(tmp_path / "short.mkv", decode_all(portrait_video)[:12])
    spec = tiny_spec(golden, media, tmp_path / "out.mp4", init_video=short)
    with pytest.raises(InputError) as err:
        run_job(spec)
    assert "gives 12 frames" in err.value.message and "has 20" in err.value.message
    assert str(short) in err.value.message and not spec.output.exists()
    # its stride selection counts too: every 2nd of 20 frames is 10
    spec = tiny_spec(golden, media, tmp_path / "out.mp4", init_video=portrait_video, stride=2, frames=12)
    with pytest.raises(InputError, match="gives 10 frames with --start 0 --stride 2"):
        run_job(spec)


def test_init_video_in_manifests_and_the_fingerprint(portrait_video, golden, media, tmp_path):
    manifest = write_manifest(
        tmp_path / "jobs.yaml",
        {"model": str(golden / "tiny_xportrait.th")},
        [{"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4"),
          "init_video": "init.mkv", "control-mode": "motion_guidance", "noised_reference": True,
          "guidance_interval": "0.25 0.75"}],
    )  # fmt: skip
    (tmp_path / "init.mkv").write_bytes(portrait_video.read_bytes())
    [job] = load_manifest(manifest)
    opts = job.spec.options
    assert job.error is None and opts.init_video == tmp_path / "init.mkv"
    assert (opts.control_mode, opts.noised_reference, opts.guidance_interval) == (
        "motion-guidance",
        True,
        (0.25, 0.75),
    )
    model = golden / "tiny_xportrait.th"
    base = job_fingerprint(job.spec, model)["digest"]
    (tmp_path / "init.mkv").write_bytes(portrait_video.read_bytes() + b"\0")  # other content, same path
    assert job_fingerprint(job.spec, model)["digest"] != base
    changes = [{"init_video": None}, {"control_mode": "controlnet-important"}]
    changes += [{"noised_reference": False}, {"guidance_interval": (0, 1)}]
    for change in changes:
        spec = type(job.spec)(job.spec.portrait, job.spec.driving, job.spec.output, opts.replace(**change))
        assert job_fingerprint(spec, model)["digest"] != base, change
    entry = {"portrait": str(media / "xportrait_source.png"), "driving": str(media / "xportrait_driving.mp4")}
    missing = write_manifest(tmp_path / "bad.yaml", {}, [{**entry, "init_video": "nope.mp4"}])
    [bad] = load_manifest(missing)
    assert "init video not found" in bad.error.message


def count_unet_passes(monkeypatch) -> list[int]:
    """Count main-UNet calls and their batch rows: one entry (rows) per call."""
    calls: list[int] = []
    original = XPortraitPipeline.predict_noise

    def counted(self, latents, *args, **kwargs):
        calls.append(latents.shape[0])
        return original(self, latents, *args, **kwargs)

    monkeypatch.setattr(XPortraitPipeline, "predict_noise", counted)
    return calls


def test_guidance_scale_one_runs_one_pass_with_the_same_result(golden, media, tmp_path, monkeypatch):
    calls = count_unet_passes(monkeypatch)
    one = run_job(tiny_spec(golden, media, tmp_path / "one.mp4", guidance_scale=1), keep_work=True)
    assert calls == [16] * 8  # 4 steps x 2 windows, conditional pass only
    calls.clear()
    # both passes at scale 1 (eps_u + 1*(eps_c - eps_u)) give the same frames up to rounding
    monkeypatch.setattr("xportrait_cli.pipeline.denoising.is_guided", lambda *a: True)
    two = run_job(tiny_spec(golden, media, tmp_path / "two.mp4", guidance_scale=1), keep_work=True)
    assert calls == [16] * 16
    error = (final_latents(one) - final_latents(two)).abs().max().item()
    assert error < 1e-4, error  # measured 3.8e-6 (|x| <= 35)


def test_guidance_interval_guides_only_the_steps_inside(default_run, golden, media, tmp_path, monkeypatch):
    assert [step_position(k, 4) for k in range(4)] == [0, 1 / 3, 2 / 3, 1]
    assert [is_guided(k, 4, 5.0, (0.0, 0.5)) for k in range(4)] == [True, True, False, False]
    calls = count_unet_passes(monkeypatch)
    result = run_job(
        tiny_spec(golden, media, tmp_path / "lo.mp4", guidance_interval=(0, 0.5)), keep_work=True
    )
    assert len(calls) == 2 * 2 * 2 + 2 * 2 * 1  # steps 0-1 guided (2 passes), steps 2-3 one pass
    latents, plain = final_latents(result), final_latents(default_run)
    assert torch.isfinite(latents).all() and (latents - plain).abs().max() > 1e-2


def test_motion_guidance_and_noised_reference_resume_bit_identical(default_run, golden, media, tmp_path):
    """Shared reference mode: one noisy reference per window, drawn from (seed, step, window), so a job
    stopped after step 2 and resumed gives the frames of an uninterrupted run."""
    options = {"control_mode": "motion-guidance", "noised_reference": True}
    full = run_job(tiny_spec(golden, media, tmp_path / "full.mp4", **options), keep_work=True)
    spec = tiny_spec(golden, media, tmp_path / "resumed.mp4", **options)

    def stop_after_two(steps_done):
        if steps_done == 2:
            raise Stop

    with pytest.raises(Stop):
        run_job(spec, after_step=stop_after_two)
    resumed = run_job(spec)
    assert resumed.resumed_from == 2
    assert np.array_equal(decoded(spec.output), decoded(full.output))
    assert (final_latents(full) - final_latents(default_run)).abs().max() > 1e-2  # the options act


def test_motion_guidance_batched_matches_two_passes(golden, media, tmp_path):
    """--batch-guidance on runs [uncond; cond] as one call (the official layout); same frames."""
    runs = [
        run_job(tiny_spec(golden, media, tmp_path / f"{b}.mp4", control_mode="motion-guidance",
                          reference_mode="per-frame", batch_guidance=b), keep_work=True)
        for b in ("on", "off")
    ]  # fmt: skip
    error = (final_latents(runs[0]) - final_latents(runs[1])).abs().max().item()
    assert error < 1e-4, error  # measured 0.0 on this CPU


def test_new_options_validate_and_round_trip(tmp_path, monkeypatch, capsys):
    from conftest import run_main

    from xportrait_cli.config import AnimateOptions
    from xportrait_cli.errors import UsageError
    from xportrait_cli.option_layers import options_to_dict, resolve_options
    from xportrait_cli.presets import load_preset

    opts = AnimateOptions(guidance_interval="0.2, 0.8", control_mode="Motion_Guidance", scheduler="lcm",
                          num_inference_steps=4, lora="org/name", lora_scale="0.5")  # fmt: skip
    assert (opts.guidance_interval, opts.control_mode, opts.lora_scale) == (
        (0.2, 0.8),
        "motion-guidance",
        0.5,
    )
    assert options_to_dict(opts)["guidance_interval"] == [0.2, 0.8]
    assert resolve_options(options_to_dict(opts)) == opts
    for bad, match in (
        ({"guidance_interval": (0.8, 0.2)}, "0 <= LO <= HI <= 1"),
        ({"guidance_interval": "0.5"}, "two numbers"),
        ({"control_mode": "balance"}, "controlnet-important, motion-guidance"),
        ({"scheduler": "lcm", "num_inference_steps": 60}, "at most 50"),
    ):
        with pytest.raises(UsageError, match=match):
            AnimateOptions(**bad)
    # a preset's relative lora is a file beside it when one exists, else a repo id
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    (tmp_path / "a.yaml").write_text("lora: mine.safetensors\ninit_video: clip.mp4\n")
    (tmp_path / "b.yaml").write_text("lora: org/name\n")
    assert load_preset(tmp_path / "a.yaml")["lora"] == str(tmp_path / "mine.safetensors")
    assert load_preset(tmp_path / "a.yaml")["init_video"] == tmp_path / "clip.mp4"
    assert load_preset(tmp_path / "b.yaml")["lora"] == "org/name"
    # the flags: two numbers for --guidance-interval; a bad value is one line and exit 2
    code, _, err = run_main(
        monkeypatch, capsys, "animate", "p.png", "d.mp4", "--guidance-interval", "0.9", "0.1"
    )
    assert code == 2 and "guidance_interval (--guidance-interval)" in err and "Traceback" not in err
    code, _, err = run_main(
        monkeypatch, capsys, "animate", "p.png", "d.mp4", "--control-mode", "motion-guidence"
    )
    assert code == 2 and "did you mean 'motion-guidance'?" in err
