"""Golden parity checker: ``python tests/golden.py PATH/TO/case.json [--batch-guidance]``.

Runs every check a golden case file defines against the official implementation's vectors (see
``../shared/golden/README.md``): the CLIP context, the VAE posterior and decoder, each network alone
(UNet with motion modules, both ControlNets, appearance net + read path, full conditional branch)
and, when the case holds sampling steps, the whole sampler end to end with the injected randomness
(window plan, averaged eps, latents and pred_x0 after every step, final latents, decoded images and
uint8 frames). The case JSON names its tensor file (``tensors_file``), weights (``checkpoint``,
``model_config``, relative to the JSON) and thresholds (``acceptance``). The sampling options of
cases c1–c3 (``../shared/golden/options``) are honoured: ``initial_facevid2vid_results`` (initial
latents from ``inputs/init_frames``, checked at ``vae/init_posterior_*`` and ``lat/init_z``),
``control_mode`` (``controlnet_important``, else ``motion-guidance``) and ``wonoise`` (False: the
reference noise ``rand/ref_noise_step{K}_window{J}`` injected in ``draw_order``; each window's
``ref_noisy`` checked).

Prints one JSON object ``{"case", "ok", "checks": {name: {"max_abs_error", "tolerance", "ok"}}}``
and exits 0 only if every check is within tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from xportrait_cli.pipeline import RandomDraws, TensorFrames, XPortraitPipeline, load_pipeline
from xportrait_cli.pipeline.schedule import alphas_cumprod, q_sample_coefficients
from xportrait_cli.pipeline.windows import window_plan


class Report:
    """Collects max-abs-error checks."""

    def __init__(self) -> None:
        self.checks: dict[str, dict] = {}

    def add(self, name: str, actual, expected, tolerance: float) -> None:
        actual = torch.as_tensor(actual).double()
        expected = torch.as_tensor(expected).double().to(actual.device)
        if actual.shape != expected.shape:
            self.checks[name] = {
                "max_abs_error": None,
                "tolerance": tolerance,
                "ok": False,
                "error": f"shape {tuple(actual.shape)} != {tuple(expected.shape)}",
            }
            return
        error = (actual - expected).abs().max().item() if actual.numel() else 0.0
        self.checks[name] = {"max_abs_error": error, "tolerance": tolerance, "ok": bool(error <= tolerance)}

    def flag(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks[name] = {
            "max_abs_error": 0.0 if ok else None,
            "tolerance": 0.0,
            "ok": ok,
            "detail": detail,
        }

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks.values())


def component_checks(pipe: XPortraitPipeline, tensors: dict, atol: float, report: Report) -> None:
    """Each network alone, at official module level (components a, b, b_local, c, c2, d)."""
    has = tensors.__contains__
    if has("text/context"):
        report.add("text/context", pipe.unet.empty_prompt_embeds, tensors["text/context"], atol)
    with torch.no_grad():
        if has("comp_a/eps"):
            eps = pipe.predict_noise(
                tensors["comp_a/x"], tensors["comp_a/t"], window_length=tensors["comp_a/x"].shape[0]
            )
            report.add("comp_a/eps", eps, tensors["comp_a/eps"], atol)
        for name, controlnet in (
            ("comp_b", pipe.global_controlnet),
            ("comp_b_local", pipe.local_controlnet),
        ):
            if not has(f"{name}/out_00"):
                continue
            x, t = tensors["comp_b/x"], tensors["comp_b/t"]
            down, mid = controlnet(
                x,
                t,
                encoder_hidden_states=pipe.prompt_embeds.expand(x.shape[0], -1, -1),
                controlnet_cond=tensors[f"{name}/hint"],
                return_dict=False,
            )
            for i, out in enumerate([*down, mid]):
                report.add(f"{name}/out_{i:02d}", out, tensors[f"{name}/out_{i:02d}"], atol)
        if has("comp_c/eps"):
            x, ref, t = tensors["comp_c/x"], tensors["comp_c/ref"], tensors["comp_c/t"]
            bank = pipe.record_reference(ref, t)
            for i, tokens in enumerate(bank.tokens):
                if has(f"comp_c/bank_{i:02d}"):
                    report.add(f"comp_c/bank_{i:02d}", tokens, tensors[f"comp_c/bank_{i:02d}"], atol)
            eps = pipe.predict_noise(x, t, window_length=x.shape[0], bank=bank)
            report.add("comp_c/eps", eps, tensors["comp_c/eps"], atol)
            if has("comp_c2/eps"):
                residuals = pipe.controlnet_residuals(x, t, tensors["comp_c2/hint"], tensors["comp_c2/local"])
                eps = pipe.predict_noise(x, t, window_length=x.shape[0], bank=bank, residuals=residuals)
                report.add("comp_c2/eps", eps, tensors["comp_c2/eps"], atol)
        if has("comp_d/image"):
            posterior = pipe.vae.encode(tensors["comp_d/image"]).latent_dist
            report.add("comp_d/posterior_mean", posterior.mean, tensors["comp_d/posterior_mean"], atol)
            report.add("comp_d/posterior_logvar", posterior.logvar, tensors["comp_d/posterior_logvar"], atol)
            report.add("comp_d/posterior_std", posterior.std, tensors["comp_d/posterior_std"], atol)
            report.add(
                "comp_d/decoded",
                pipe.vae.decode(tensors["comp_d/z"]).sample,
                tensors["comp_d/decoded"],
                atol,
            )
            z = tensors["comp_d/z_scaled"] / pipe.scale_factor
            report.add(
                "comp_d/decode_first_stage",
                pipe.vae.decode(z).sample,
                tensors["comp_d/decode_first_stage"],
                atol,
            )


def end_to_end_checks(
    pipe: XPortraitPipeline, case: dict, tensors: dict, batch_guidance: bool, report: Report
) -> None:
    """The sampler with the case's injected randomness, checked after every step and at the end."""
    acc = case["acceptance"]
    steps = len(case["timesteps_in_sampling_order"])
    draws = RandomDraws(
        init_posterior_noise=tensors["rand/init_posterior_noise"],
        init_eps=tensors["rand/init_eps"],
        ref_posterior_noise=tensors["rand/ref_posterior_noise"],
        offsets=[int(o) for o in tensors["rand/offsets"]],
        injected_reference_noise=_reference_noise(case, tensors),
    )
    frames = TensorFrames(tensors["inputs/conditions"], tensors["inputs/local"])
    n = len(frames)
    schedule = alphas_cumprod()
    report.add("sched/alphas_cumprod", schedule, tensors["sched/alphas_cumprod"], 0.0)
    mean, std = pipe.encode_posterior(tensors["inputs/source"])
    report.add(
        "vae/source_posterior_mean", mean, tensors["vae/source_posterior_mean"], acc["single_network_atol"]
    )
    report.add(
        "vae/source_posterior_std", std, tensors["vae/source_posterior_std"], acc["single_network_atol"]
    )
    init_frames = None
    if case.get("initial_facevid2vid_results"):
        init_frames = InitTensor(tensors["inputs/init_frames"])
        init_mean, init_std = pipe.encode_init_frames(init_frames, n)
        for name, value in (("mean", init_mean), ("std", init_std)):
            key = f"vae/init_posterior_{name}"
            report.add(key, value, tensors[key], acc["single_network_atol"])
        z = pipe.scale_factor * (init_mean + init_std * draws.init_posterior_noise)
        report.add("lat/init_z", z, tensors["lat/init_z"], _latent_tol(acc, tensors["lat/init_z"]))
        x_t = pipe.prepare_latents(init_mean, init_std, draws, schedule)
    else:
        x_t = pipe.prepare_latents(mean, std, draws, schedule)
    report.add("lat/x_T", x_t, tensors["lat/x_T"], _latent_tol(acc, tensors["lat/x_T"]))
    ref = pipe.reference_latents(mean, std, draws.ref_posterior_noise)
    report.add(
        "lat/ref_latents", ref, tensors["lat/ref_latents"], _latent_tol(acc, tensors["lat/ref_latents"])
    )
    windows_ok = all(
        window_plan(n, draws.offsets[k], case["num_mix"])
        == [[int(i) for i in w] for w in case["windows_per_step"][k]]
        for k in range(steps)
    )
    report.flag("windows_per_step", windows_ok)

    def on_step(_pipe, k, timestep, state):
        report.flag(f"step{k}/timestep", timestep == case["timesteps_in_sampling_order"][k], str(timestep))
        report.add(f"step{k}/eps_avg", state["noise_pred"], tensors[f"step{k}/eps_avg"], acc["eps_avg_atol"])
        for name, key in (("x_prev", "latents"), ("pred_x0", "pred_original_sample")):
            expected = tensors[f"step{k}/{name}"]
            report.add(f"step{k}/{name}", state[key], expected, _latent_tol(acc, expected))

    noised = not case.get("wonoise", True)
    if noised:
        _check_noisy_references(case, tensors, ref, acc, report)
    out = pipe(
        tensors["inputs/source"],
        frames,
        num_inference_steps=case["ddim_steps_requested"],
        guidance_scale=case["uc_scale"],
        num_mix=case["num_mix"],
        reference_mode="per-frame",
        batch_guidance=batch_guidance,
        init_frames=init_frames,
        control_mode=_control_mode(case),
        noised_reference=noised,
        draws=draws,
        callback_on_step_end=on_step,
        output_type="latent",
    )
    report.add(
        "final/latents", out.latents, tensors["final/latents"], _latent_tol(acc, tensors["final/latents"])
    )
    with torch.no_grad():
        decoded = torch.cat(
            [pipe.vae.decode(z / pipe.scale_factor).sample for z in out.latents.split(16)]
        ).clamp(-1, 1)
    report.add("final/decoded", decoded, tensors["final/decoded"], acc["decoded_atol"])
    frames_u8 = torch.from_numpy(np.concatenate(list(pipe.decode_latents(out.latents, 16))))
    report.add(
        "final/frames_uint8",
        frames_u8.int(),
        tensors["final/frames_uint8"].int(),
        acc["frames_uint8_max_levels"],
    )


class InitTensor:
    """Init frames held in memory, ``(N, 3, S, S)`` in [-1, 1] (the :class:`InitFrames` protocol)."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.tensor = frames

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def frames(self, indices) -> torch.Tensor:
        return self.tensor[list(indices)]


def _control_mode(case: dict) -> str:
    """The official ``control_mode`` in our spelling: any value but ``controlnet_important`` takes the
    other path (golden case c2)."""
    official = case.get("control_mode", "controlnet_important")
    return "controlnet-important" if official == "controlnet_important" else "motion-guidance"


def _reference_noise(case: dict, tensors: dict) -> dict[tuple[int, int], torch.Tensor]:
    """The per-window reference draws of ``draw_order`` (``rand/ref_noise_step{K}_window{J}``)."""
    found = {}
    for draw in case.get("draw_order", []):
        key = draw.get("stored_as") or ""
        if key.startswith("rand/ref_noise_step"):
            step, window = key.removeprefix("rand/ref_noise_step").split("_window")
            found[(int(step), int(window))] = tensors[key]
    return found


def _check_noisy_references(case, tensors, ref, acc, report: Report) -> None:
    """``step{K}/window{J}/ref_noisy`` = q_sample(ref_latents[indices], t) with the injected noise."""
    schedule = alphas_cumprod()
    for (k, j), noise in _reference_noise(case, tensors).items():
        t = case["timesteps_in_sampling_order"][k]
        c1, c2 = q_sample_coefficients(schedule, t)
        indices = [int(i) for i in case["windows_per_step"][k][j]]
        expected = tensors[f"step{k}/window{j}/ref_noisy"]
        report.add(f"step{k}/window{j}/ref_noisy", c1 * ref[indices] + c2 * noise, expected,
                   _latent_tol(acc, expected))  # fmt: skip


def _latent_tol(acceptance: dict, expected: torch.Tensor) -> float:
    return max(acceptance["latents_atol"], acceptance["latents_rtol_of_max"] * expected.abs().max().item())


def run_case(
    case_path: Path,
    batch_guidance: bool = False,
    case: dict | None = None,
    pipe: XPortraitPipeline | None = None,
) -> dict:
    """Run every check of one case file; returns the report as a JSON-able dict. ``case`` replaces
    the file's JSON (tests change one option to show the checks catch it); ``pipe`` replaces the
    case's checkpoint (e.g. a converted folder's pipeline)."""
    case_path = Path(case_path).resolve()
    case = case if case is not None else json.loads(case_path.read_text())
    tensors = load_file(str(case_path.parent / case["tensors_file"]))
    config = case.get("model_config")
    if pipe is None:
        pipe = load_pipeline(
            case_path.parent / case["checkpoint"], config=case_path.parent / config if config else None
        )
    report = Report()
    component_checks(pipe, tensors, case["acceptance"]["single_network_atol"], report)
    if "step0/x_prev" in tensors:
        end_to_end_checks(pipe, case, tensors, batch_guidance, report)
    return {"case": str(case_path), "ok": report.ok, "checks": report.checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="golden case JSON (e.g. ../shared/golden/case_a.json)")
    parser.add_argument("--batch-guidance", action="store_true", help="run cond and uncond in one batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run_case(args.case, args.batch_guidance)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
