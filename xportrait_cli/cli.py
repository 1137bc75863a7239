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

from xportrait_cli.config import OPTION_NAMES, OUTPUT, SAMPLING, default_of, help_text, option_field
from xportrait_cli.errors import XPortraitError
from xportrait_cli.face.crop_options import CropOptions
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
    portrait: Annotated[str, typer.Argument(help="Portrait image (PNG, JPEG, WebP, ...).")],
    driving: Annotated[str | None, typer.Argument(help="Driving video (optional).")] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Preview: .png (portrait | best aligned frame) or .mp4 (every frame)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with the results on stdout.")
    ] = False,
    landmarks: Annotated[str, typer.Option(help="Landmark backend: auto, fan or dlib.")] = "auto",
    device: Annotated[str, typer.Option(help="Device of the fan backend (cpu, cuda, cuda:1, ...).")] = "cpu",
    best_frame: Annotated[
        int, typer.Option(help="Driving frame matching the portrait's pose; -1 automatic, -2 no alignment.")
    ] = -1,
    start: Annotated[int, typer.Option(help="First driving frame (official start_idx).")] = 0,
    frames: Annotated[int, typer.Option(help="Number of driving frames, 0 = all (official out_frames).")] = 0,
    stride: Annotated[int, typer.Option(help="Use every n-th driving frame (official skip).")] = 1,
    crop: Annotated[str, typer.Option(help=help_text("crop"))] = "auto",
) -> None:
    """Run only the preprocessing stage: landmarks, best frame, alignment and eye/mouth patches.

    Draws them over the portrait and the aligned driving frames with -o; --json prints
    {"portrait", "best_frame", "affine", "frames"} in pixels of the 512x512 frames.
    """
    import json

    from xportrait_cli.face.landmarks import make_detector
    from xportrait_cli.inspect import inspect_inputs
    from xportrait_cli.option_layers import resolve_options

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


def _shown(value: object) -> str | bool:
    """A built-in default as ``--help`` shows it (False: none shown)."""
    if value is None or value == ():
        return False
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value).lower()


def _output(*decls: str, help: str) -> typer.models.OptionInfo:
    """A CLI-only option of ``animate`` (not a job option), in the Output panel of ``--help``."""
    return typer.Option(*decls, help=help, rich_help_panel=OUTPUT)


def _option(name: str, *decls: str, **extra: object) -> typer.models.OptionInfo:
    """The Typer option of the job option ``name``: flag (``--x/--no-x`` for a switch), help text,
    ``--help`` panel, shown default and environment variable, all from its field's metadata."""
    meta = option_field(name).metadata
    flag, default = meta["flag"], default_of(name)
    if not decls:
        decls = (f"{flag}/--no-{flag[2:]}",) if isinstance(default, bool) else (flag,)
    return typer.Option(
        *decls, help=meta["help"], rich_help_panel=meta["panel"], show_default=_shown(default),
        envvar=meta.get("envvar"), **extra,
    )  # fmt: skip


@app.command("animate")
def animate_command(
    portrait: Annotated[Path, typer.Argument(help="Portrait image (PNG, JPEG, WebP, ...).")],
    driving: Annotated[Path, typer.Argument(help="Driving video (or a single image).")],
    model: Annotated[Path | None, _option("model")] = None,
    model_config: Annotated[Path | None, _option("model_config")] = None,
    start: Annotated[int | None, _option("start")] = None,
    frames: Annotated[int | None, _option("frames")] = None,
    stride: Annotated[int | None, _option("stride")] = None,
    reference: Annotated[list[Path] | None, _option("reference")] = None,
    init_video: Annotated[Path | None, _option("init_video")] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Preset name (presets/*.yaml) or YAML path; flags override it.", rich_help_panel=SAMPLING
        ),
    ] = None,
    num_inference_steps: Annotated[int | None, _option("num_inference_steps")] = None,
    guidance_scale: Annotated[float | None, _option("guidance_scale")] = None,
    guidance_interval: Annotated[
        tuple[float, float] | None, _option("guidance_interval", metavar="LO HI")
    ] = None,
    num_mix: Annotated[int | None, _option("num_mix")] = None,
    seed: Annotated[int | None, _option("seed")] = None,
    reference_mode: Annotated[str | None, _option("reference_mode")] = None,
    control_mode: Annotated[str | None, _option("control_mode")] = None,
    noised_reference: Annotated[
        bool | None, _option("noised_reference", "--noised-reference/--clean-reference")
    ] = None,
    scheduler: Annotated[str | None, _option("scheduler")] = None,
    lora: Annotated[str | None, _option("lora", metavar="PATH|REPO")] = None,
    lora_scale: Annotated[float | None, _option("lora_scale")] = None,
    best_frame: Annotated[int | None, _option("best_frame")] = None,
    landmarks: Annotated[str | None, _option("landmarks")] = None,
    crop: Annotated[str | None, _option("crop")] = None,
    output: Annotated[
        Path | None,
        _output(
            "-o",
            "--output",
            help="Output .mp4, or an existing folder (default: <portrait>--<driving>.mp4 here).",
        ),
    ] = None,
    size: Annotated[int | None, _option("size")] = None,
    paste_back: Annotated[bool | None, _option("paste_back")] = None,
    comparison: Annotated[bool | None, _option("comparison")] = None,
    device: Annotated[str | None, _option("device")] = None,
    dtype: Annotated[str | None, _option("dtype")] = None,
    batch_guidance: Annotated[str | None, _option("batch_guidance")] = None,
    offload: Annotated[str | None, _option("offload")] = None,
    decode_chunk_size: Annotated[int | None, _option("decode_chunk_size")] = None,
    compile: Annotated[bool | None, _option("compile")] = None,
    force: Annotated[
        bool, _output("--force", help="Redo the job even if a finished output or checkpoint matches.")
    ] = False,
    keep_work: Annotated[
        bool, _output("--keep-work", help="Keep the working directory <output>.xportrait/ after success.")
    ] = False,
    quiet: Annotated[bool, _output("--quiet", "-q", help="Print only the output path.")] = False,
    json_lines: Annotated[bool, _output("--json", help="One JSON object per event on stdout.")] = False,
) -> None:
    """Animate PORTRAIT with the motion of DRIVING and write an MP4 (audio kept, resumable)."""
    given = locals()  # every parameter: the job options are named like AnimateOptions' fields
    from xportrait_cli.jobs import JobSpec, run_job
    from xportrait_cli.jobs.spec import output_path
    from xportrait_cli.option_layers import resolve_options
    from xportrait_cli.progress import choose_mode, make_sink

    flags = {name: given[name] for name in OPTION_NAMES}
    flags["reference"] = flags["reference"] or None  # no --reference: not set (a preset's stay)
    _log_to_stderr("WARNING")
    options = resolve_options(flags, preset=preset)
    spec = JobSpec(portrait, driving, output_path(output, portrait, driving), options)
    with make_sink(choose_mode(quiet=quiet, json_lines=json_lines)) as sink:
        run_job(spec, sink, force=force, keep_work=keep_work)


#: The crop command's defaults, from the library (never retyped here).
crop_defaults = CropOptions()


@app.command("crop")
def crop_command(
    input_path: Annotated[str, typer.Argument(metavar="INPUT", help="Portrait image or video to crop.")],
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="Output image or .mp4 (default: <stem>.crop.png|mp4 here)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the crop information as JSON.")] = False,
    size: Annotated[int, typer.Option(help="Side of the square output in pixels.")] = crop_defaults.size,
    scale: Annotated[
        float, typer.Option(help="Crop side in face sizes (LivePortrait: 2.2-2.3).")
    ] = crop_defaults.scale,
    vy: Annotated[
        float, typer.Option(help="Box centre below the face centre, in crop sides (<0: up).")
    ] = crop_defaults.vy,
    face: Annotated[
        int | None, typer.Option(help="Face to crop, 0-based from the left (default: the largest).")
    ] = crop_defaults.face,
    pad: Annotated[
        str, typer.Option(help="Fill where the box leaves the frame: edge or black.")
    ] = crop_defaults.pad,
    landmarks: Annotated[str, typer.Option(help="Landmark backend: auto, fan or dlib.")] = "auto",
    device: Annotated[str, typer.Option(help="Device of the fan backend (cpu, cuda, ...).")] = "cpu",
    detect_frames: Annotated[
        int, typer.Option(help="Video: frames searched for faces, at most (spread evenly).")
    ] = crop_defaults.detect_frames,
) -> None:
    """Crop a portrait or a video to a square around the face (one steady box for a video).

    Writes OUT and OUT's .crop.json (box, affine back to the original, faces found) beside it; prints
    the output path, or the JSON with --json. Exits 1 when there is no face.
    """
    import json

    from xportrait_cli.face.crop_inputs import crop_file
    from xportrait_cli.face.landmarks import make_detector
    from xportrait_cli.progress import choose_mode, make_sink

    _log_to_stderr("INFO")
    options = CropOptions(size=size, scale=scale, vy=vy, face=face, pad=pad, detect_frames=detect_frames)
    detector = make_detector(landmarks, device)
    mode = "quiet" if json_output else choose_mode(console=err_console)
    with make_sink(mode, err_console) as sink:
        info = crop_file(input_path, output, options, detector=detector, events=sink)
    if json_output:
        typer.echo(json.dumps(info.to_json()))
        return
    faces = f"{info.faces} face{'s' if info.faces != 1 else ''}"
    err_console.print(f"{faces} found; cropped face {info.face} (box {info.box.tolist()})", markup=False)
    typer.echo(info.output)


_RAY_HELP = (
    "Run the jobs as Ray tasks, one per job: `local` starts Ray on this machine, `auto` joins the "
    "cluster started here with `ray start`, or a cluster address (ray://host:10001, host:6379). "
    "Outputs must be on storage every node sees. Needs `pip install 'xportrait\\[ray]'`."
)


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
        typer.Option("--ray", metavar="ADDRESS", help=_RAY_HELP),
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option(help="With --ray: GPUs per job (default 1; 0.5 runs two jobs per GPU; 0 runs on CPUs)."),
    ] = None,
    num_cpus: Annotated[
        float | None, typer.Option(help="With --ray: CPUs per job, its torch threads (default 1).")
    ] = None,
) -> None:
    """Run every job of MANIFEST: skip finished ones, resume interrupted ones,
    isolate failures.

    Options come from each job, then the manifest's defaults, then --preset,
    then the built-in defaults (no animate flags here: put batch-wide settings
    in `defaults:` or a preset). The whole manifest is checked first (exit 2 on
    a manifest error); exit 3 when a job failed, 130 on Ctrl-C. With --ray the
    jobs run at once on a Ray cluster, with the same summary and exit codes; a
    job whose worker or node dies is run again and resumes from its last step.
    """
    from xportrait_cli.jobs.batch import BatchInterrupted
    from xportrait_cli.jobs.dispatch import run_manifest
    from xportrait_cli.progress import choose_mode, make_sink

    _log_to_stderr("WARNING")
    mode = choose_mode(quiet=quiet, json_lines=json_lines, console=err_console)
    interrupted: BatchInterrupted | None = None
    with make_sink(mode, err_console) as sink:
        try:
            summary = run_manifest(
                manifest, sink, preset=preset, output_dir=output_dir, fmt=manifest_format, shard=shard,
                ray=ray, num_gpus=num_gpus, num_cpus=num_cpus, force=force, keep_work=keep_work,
                fail_fast=fail_fast,
            )  # fmt: skip
        except BatchInterrupted as exc:
            summary, interrupted = exc.summary, exc
    _print_summary(summary, mode)
    if interrupted is not None:
        raise interrupted
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _print_summary(summary, mode: str) -> None:
    """A batch's result: the summary object on stdout (``json``), failed jobs on stderr
    (``quiet``), else the table on stderr."""
    import json

    from xportrait_cli.progress import batch_table

    if mode == "json":
        typer.echo(json.dumps(summary.to_dict()))
    elif mode == "quiet":
        for job in summary.jobs:
            if job.status == "failed":
                err_console.print(f"failed: {job.label}: {job.error}", markup=False)
    else:
        err_console.print(batch_table(summary))


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
