"""The ``xportrait`` command line: a thin Typer front end over the library.

Each command parses its options, calls one library function and renders the result. Known errors
(:class:`xportrait_cli.errors.XPortraitError`) print one line on stderr and exit with their code
(1, or 2 for usage errors); Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException
from rich.console import Console

from xportrait_cli.config import help_text
from xportrait_cli.errors import XPortraitError
from xportrait_cli.weights.registry import CUDA_DTYPE, DEFAULT_REVISION, REPO_ID

app = typer.Typer(
    name="xportrait",
    help="Animate a portrait photo with the motion of a driving video (X-Portrait).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _root() -> None:
    """Animate a portrait photo with the motion of a driving video (X-Portrait)."""


@app.command("download-weights")
def download_weights_command(
    cache_dir: Annotated[
        str | None, typer.Option(help="Hugging Face hub cache (default: HF_HUB_CACHE, HF_HOME/hub).")
    ] = None,
    revision: Annotated[str, typer.Option(help=f"Branch, tag or commit of {REPO_ID}.")] = DEFAULT_REVISION,
    dtype: Annotated[
        str,
        typer.Option(help="Converted weights precision: fp16 (what animate runs on CUDA), bf16 or fp32."),
    ] = CUDA_DTYPE,
    convert: Annotated[
        bool,
        typer.Option(
            "--convert/--no-convert", help="Convert the checkpoint once into the fast-loading folder."
        ),
    ] = True,
    model_dir: Annotated[
        str | None, typer.Option(help="Where converted folders go (default: XPORTRAIT_HOME/models).")
    ] = None,
    landmark_weights: Annotated[
        bool,
        typer.Option(
            "--landmark-weights/--no-landmark-weights", help="Also fetch the FAN-68 and S3FD weights."
        ),
    ] = True,
    landmark_url: Annotated[
        str | None,
        typer.Option(
            envvar="XPORTRAIT_LANDMARK_URL", help="Base URL of a mirror of the face-alignment weights."
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Report what is present and valid; download nothing.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List sizes and targets; download nothing.")
    ] = False,
    lcm_lora: Annotated[
        bool,
        typer.Option(
            "--lcm-lora",
            help="Also fetch the experimental LCM-LoRA (latent-consistency/lcm-lora-sdv1-5), for preset lcm.",
        ),
    ] = False,
) -> None:
    """Download and verify the X-Portrait checkpoint and the landmark weights, then convert it.

    HF_ENDPOINT and HF_TOKEN are honoured. Paths go to stdout (one `name<TAB>status<TAB>size<TAB>path`
    line each), progress to stderr. With --check, exits 1 when anything is missing or invalid.
    """
    from xportrait_cli.errors import WeightsMissingError
    from xportrait_cli.progress import download_bars
    from xportrait_cli.weights.download import run

    with download_bars(err_console) as progress:
        report = run(
            check=check,
            dry_run=dry_run,
            lcm_lora=lcm_lora,
            cache_dir=cache_dir,
            revision=revision,
            landmarks=landmark_weights,
            landmark_url=landmark_url,
            convert=convert,
            dtype=dtype,
            model_dir=model_dir,
            progress=progress,
        )
    for item in report.items:
        size = "-" if item.size is None else str(item.size)
        typer.echo(f"{item.name}\t{item.status}\t{size}\t{item.path or '-'}")
        if item.detail:
            err_console.print(f"  {item.name}: {item.detail}", markup=False)
    typer.echo(f"model\t{'ok' if report.model_path else 'missing'}\t-\t{report.model_path or '-'}")
    if not report.ok:
        bad = ", ".join(f"{i.name} ({i.status})" for i in report.items if not i.ok)
        raise WeightsMissingError(f"missing or invalid: {bad}", hint="run `xportrait download-weights`")


@app.command("inspect")
def inspect_command(
    portrait: str = typer.Argument(..., help="Portrait image (PNG, JPEG, WebP, ...)."),
    driving: str | None = typer.Argument(None, help="Driving video (optional)."),
    output: str | None = typer.Option(
        None, "-o", "--output", help="Preview: .png (portrait | best aligned frame) or .mp4 (every frame)."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print one JSON object with the results on stdout."
    ),
    landmarks: str = typer.Option("auto", "--landmarks", help="Landmark backend: auto, fan or dlib."),
    device: str = typer.Option("cpu", "--device", help="Device of the fan backend (cpu, cuda, cuda:1, ...)."),
    best_frame: int = typer.Option(
        -1, "--best-frame", help="Driving frame matching the portrait's pose; -1 automatic, -2 no alignment."
    ),
    start: int = typer.Option(0, "--start", help="First driving frame (official start_idx)."),
    frames: int = typer.Option(
        0, "--frames", help="Number of driving frames, 0 = all (official out_frames)."
    ),
    stride: int = typer.Option(1, "--stride", help="Use every n-th driving frame (official skip)."),
    crop: str = typer.Option("auto", "--crop", help=help_text("crop")),
) -> None:
    """Run only the preprocessing stage: landmarks, best frame, alignment and eye/mouth patches.

    Draws them over the portrait and the aligned driving frames with -o; --json prints
    {"portrait", "best_frame", "affine", "frames"} in pixels of the 512x512 frames.
    """
    import json

    from xportrait_cli.config import resolve_options
    from xportrait_cli.face.landmarks import make_detector
    from xportrait_cli.inspect import inspect_inputs

    _log_to_stderr("INFO")
    detector = make_detector(landmarks, device)
    result = inspect_inputs(
        portrait,
        driving,
        detector=detector,
        best_frame=best_frame,
        start=start,
        num_frames=frames,
        stride=stride,
        output=output,
        crop=resolve_options({"crop": crop}).crop,
    )
    if json_output:
        typer.echo(json.dumps(result.to_json()))
    else:
        faces = sum(f["face"] for f in result.frames)
        found = "face found" if result.portrait_landmarks is not None else "no face (no alignment)"
        summary = f"portrait: {found} ({detector.name})"
        if result.cropped:
            summary += f"; cropped: {', '.join(result.cropped)}"
        if driving is not None:
            summary += (
                f"; driving: face in {faces}/{len(result.frames)} frames; best frame {result.best_frame}"
            )
        typer.echo(summary)
    if result.preview is not None:
        err_console.print(f"preview written to {result.preview}", markup=False)


@app.command("animate")
def animate_command(
    portrait: Annotated[Path, typer.Argument(help="Portrait image (PNG, JPEG, WebP, ...).")],
    driving: Annotated[Path, typer.Argument(help="Driving video (or a single image).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Output .mp4, or an existing folder (default: <portrait>--<driving>.mp4 here).",
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option(help=help_text("model"), envvar="XPORTRAIT_MODEL")] = None,
    model_config: Annotated[Path | None, typer.Option(help=help_text("model_config"))] = None,
    preset: Annotated[
        str | None, typer.Option(help="Preset name (presets/*.yaml) or YAML path; flags override it.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help=help_text("num_inference_steps"))] = None,
    guidance_scale: Annotated[float | None, typer.Option(help=help_text("guidance_scale"))] = None,
    num_mix: Annotated[int | None, typer.Option(help=help_text("num_mix"))] = None,
    seed: Annotated[int | None, typer.Option(help=help_text("seed"))] = None,
    best_frame: Annotated[int | None, typer.Option(help=help_text("best_frame"))] = None,
    start: Annotated[int | None, typer.Option(help=help_text("start"))] = None,
    frames: Annotated[int | None, typer.Option(help=help_text("frames"))] = None,
    stride: Annotated[int | None, typer.Option(help=help_text("stride"))] = None,
    size: Annotated[int | None, typer.Option(help=help_text("size"))] = None,
    reference: Annotated[list[Path] | None, typer.Option(help=help_text("reference"))] = None,
    landmarks: Annotated[str | None, typer.Option(help=help_text("landmarks"))] = None,
    device: Annotated[str | None, typer.Option(help=help_text("device"))] = None,
    dtype: Annotated[str | None, typer.Option(help=help_text("dtype"))] = None,
    reference_mode: Annotated[str | None, typer.Option(help=help_text("reference_mode"))] = None,
    batch_guidance: Annotated[str | None, typer.Option(help=help_text("batch_guidance"))] = None,
    decode_chunk_size: Annotated[int | None, typer.Option(help=help_text("decode_chunk_size"))] = None,
    offload: Annotated[str | None, typer.Option(help=help_text("offload"))] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help=help_text("compile"))] = None,
    crop: Annotated[str | None, typer.Option(help=help_text("crop"))] = None,
    paste_back: Annotated[
        bool | None, typer.Option("--paste-back/--no-paste-back", help=help_text("paste_back"))
    ] = None,
    comparison: Annotated[
        bool | None, typer.Option("--comparison/--no-comparison", help=help_text("comparison"))
    ] = None,
    init_video: Annotated[Path | None, typer.Option(help=help_text("init_video"))] = None,
    control_mode: Annotated[str | None, typer.Option(help=help_text("control_mode"))] = None,
    noised_reference: Annotated[
        bool | None,
        typer.Option("--noised-reference/--clean-reference", help=help_text("noised_reference")),
    ] = None,
    guidance_interval: Annotated[
        tuple[float, float] | None,
        typer.Option(metavar="LO HI", help=help_text("guidance_interval")),
    ] = None,
    lora: Annotated[str | None, typer.Option(metavar="PATH|REPO", help=help_text("lora"))] = None,
    lora_scale: Annotated[float | None, typer.Option(help=help_text("lora_scale"))] = None,
    scheduler: Annotated[str | None, typer.Option(help=help_text("scheduler"))] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo the job even if a finished output or checkpoint matches.")
    ] = False,
    keep_work: Annotated[
        bool,
        typer.Option("--keep-work", help="Keep the working directory <output>.xportrait/ after success."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per event on stdout.")] = False,
) -> None:
    """Animate PORTRAIT with the motion of DRIVING and write an MP4 (audio kept, resumable)."""
    from xportrait_cli.config import resolve_options
    from xportrait_cli.jobs import JobSpec, run_job
    from xportrait_cli.jobs.spec import output_path
    from xportrait_cli.progress import choose_mode, make_sink

    flags = dict(
        model=model,
        model_config=model_config,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        num_mix=num_mix,
        seed=seed,
        best_frame=best_frame,
        start=start,
        frames=frames,
        stride=stride,
        size=size,
        reference=reference or None,
        landmarks=landmarks,
        device=device,
        dtype=dtype,
        reference_mode=reference_mode,
        batch_guidance=batch_guidance,
        decode_chunk_size=decode_chunk_size,
        offload=offload,
        compile=compile,
        crop=crop,
        paste_back=paste_back,
        comparison=comparison,
        init_video=init_video,
        control_mode=control_mode,
        noised_reference=noised_reference,
        guidance_interval=guidance_interval,
        lora=lora,
        lora_scale=lora_scale,
        scheduler=scheduler,
    )
    _log_to_stderr("WARNING")
    options = resolve_options(flags, preset=preset)
    spec = JobSpec(portrait, driving, output_path(output, portrait, driving), options)
    with make_sink(choose_mode(quiet=quiet, json_lines=json_lines)) as sink:
        run_job(spec, sink, force=force, keep_work=keep_work)


@app.command("crop")
def crop_command(
    input_path: str = typer.Argument(..., metavar="INPUT", help="Portrait image or video to crop."),
    output: str | None = typer.Option(
        None, "-o", "--output", help="Output image or .mp4 (default: <stem>.crop.png|mp4 here)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the crop information as JSON."),
    size: int = typer.Option(512, "--size", help="Side of the square output in pixels."),
    scale: float = typer.Option(2.2, "--scale", help="Crop side in face sizes (LivePortrait: 2.2-2.3)."),
    vy: float = typer.Option(-0.1, "--vy", help="Box centre below the face centre, in crop sides (<0: up)."),
    face: int | None = typer.Option(
        None, "--face", help="Face to crop, 0-based from the left (default: the largest)."
    ),
    pad: str = typer.Option("edge", "--pad", help="Fill where the box leaves the frame: edge or black."),
    landmarks: str = typer.Option("auto", "--landmarks", help="Landmark backend: auto, fan or dlib."),
    device: str = typer.Option("cpu", "--device", help="Device of the fan backend (cpu, cuda, ...)."),
    detect_frames: int = typer.Option(
        32, "--detect-frames", help="Video: frames searched for faces, at most (spread evenly)."
    ),
) -> None:
    """Crop a portrait or a video to a square around the face (one steady box for a video).

    Writes OUT and OUT's .crop.json (box, affine back to the original, faces found) beside it; prints
    the output path, or the JSON with --json. Exits 1 when there is no face.
    """
    import json

    from xportrait_cli.face.crop import crop_file
    from xportrait_cli.face.landmarks import make_detector
    from xportrait_cli.progress import choose_mode, make_sink

    _log_to_stderr("INFO")
    detector = make_detector(landmarks, device)
    mode = "quiet" if json_output else choose_mode(console=err_console)
    with make_sink(mode, err_console) as sink:
        info = crop_file(
            input_path, output, size=size, scale=scale, vy=vy, face=face, detector=detector, pad=pad,
            detect_frames=detect_frames, events=sink,
        )  # fmt: skip
    if json_output:
        typer.echo(json.dumps(info.to_json()))
        return
    faces = f"{info.faces} face{'s' if info.faces != 1 else ''}"
    err_console.print(f"{faces} found; cropped face {info.face} (box {info.box.tolist()})", markup=False)
    typer.echo(info.output)


@app.command("batch")
def batch_command(
    manifest: Annotated[str, typer.Argument(help="Job manifest: YAML, CSV or JSONL file, or - for stdin.")],
    preset: Annotated[
        str | None,
        typer.Option(
            help="Preset name (presets/*.yaml) or YAML path; manifest defaults and jobs override it."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for default and relative outputs (default: beside the manifest)."),
    ] = None,
    manifest_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="Manifest format: yaml, csv or jsonl (default: from the name, or sniffed)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo every job, even finished ones and their checkpoints.")
    ] = False,
    keep_work: Annotated[
        bool, typer.Option("--keep-work", help="Keep each job's <output>.xportrait/ after success.")
    ] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job.")] = False,
    shard: Annotated[
        str | None,
        typer.Option(help="Run only shard i of n (0-based, jobs i, i+n, ...): one process per GPU."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only output paths (and failed jobs on stderr).")
    ] = False,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per event on stdout, then a batch_summary object."),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the jobs as Ray tasks, one per job: `local` starts Ray on this machine, `auto` "
            "joins the cluster started here with `ray start`, or a cluster address (ray://host:10001, "
            "host:6379). Outputs must be on storage every node sees. Needs `pip install 'xportrait\\[ray]'`.",
        ),
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option(help="With --ray: GPUs per job (default 1; 0.5 runs two jobs per GPU; 0 runs on CPUs)."),
    ] = None,
    num_cpus: Annotated[
        float | None, typer.Option(help="With --ray: CPUs per job, its torch threads (default 1).")
    ] = None,
) -> None:
    """Run every job of MANIFEST: skip finished ones, resume interrupted ones, isolate failures.

    Options come from each job, then the manifest's defaults, then --preset, then the built-in
    defaults (no animate flags here: put batch-wide settings in `defaults:` or a preset). The whole
    manifest is checked first (exit 2 on a manifest error); exit 3 when a job failed, 130 on Ctrl-C.
    With --ray the jobs run at once on a Ray cluster, with the same summary and exit codes; a job
    whose worker or node dies is run again and resumes from its last step.
    """
    import json

    from xportrait_cli.errors import UsageError
    from xportrait_cli.jobs.batch import BatchInterrupted, Shard, run_batch
    from xportrait_cli.jobs.manifest import load_manifest
    from xportrait_cli.jobs.ray_batch import run_batch_ray
    from xportrait_cli.progress import batch_table, choose_mode, make_sink

    _log_to_stderr("WARNING")
    if ray is None and (num_gpus is not None or num_cpus is not None):
        raise UsageError("--num-gpus and --num-cpus only apply with --ray", "e.g. --ray local --num-gpus 0")
    if ray is not None and not ray.strip():
        raise UsageError("--ray needs an address", "--ray local, --ray auto or --ray host:6379")
    selected = Shard.parse(shard) if shard is not None else None
    jobs = load_manifest(manifest, preset=preset, output_dir=output_dir, fmt=manifest_format)
    mode = choose_mode(quiet=quiet, json_lines=json_lines, console=err_console)
    interrupted: BatchInterrupted | None = None
    common = dict(force=force, keep_work=keep_work, fail_fast=fail_fast, shard=selected)
    with make_sink(mode, err_console) as sink:
        try:
            if ray is None:
                summary = run_batch(jobs, sink, **common)
            else:
                given = {"num_gpus": num_gpus, "num_cpus": num_cpus}
                resources = {name: value for name, value in given.items() if value is not None}
                summary = run_batch_ray(jobs, sink, address=ray.strip(), **resources, **common)
        except BatchInterrupted as exc:
            summary, interrupted = exc.summary, exc
    if mode == "json":
        typer.echo(json.dumps(summary.to_dict()))
    elif mode == "quiet":
        for job in summary.jobs:
            if job.status == "failed":
                err_console.print(f"failed: {job.label}: {job.error}", markup=False)
    else:
        err_console.print(batch_table(summary))
    if interrupted is not None:
        raise interrupted
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _log_to_stderr(level: str) -> None:
    """Library log records at ``level`` (``"INFO"``, ``"WARNING"``) and above as plain lines on
    stderr, unless logging is already set up (e.g. by a host program or pytest)."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def main() -> None:
    """Console-script entry point: run the app and map known errors to exit codes."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except XPortraitError as exc:
        err_console.print(f"error: {exc.one_line()}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except ClickException as exc:  # usage errors (missing argument, bad option): exit 2
        exc.show()
        sys.exit(exc.exit_code)
