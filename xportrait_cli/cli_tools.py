"""The ``xportrait`` tool commands: ``download-weights``, ``convert``, ``crop`` and ``inspect``.

They register on :data:`xportrait_cli.cli.app` (imported by :mod:`xportrait_cli.cli`); like every
command, each parses its options, calls one library function and renders the result.
"""

from __future__ import annotations

from typing import Annotated

import typer

from xportrait_cli.cli import app, err_console, log_to_stderr
from xportrait_cli.face.crop_options import CropOptions
from xportrait_cli.option_names import help_text
from xportrait_cli.weights.registry import CUDA_DTYPE, DEFAULT_REVISION, REPO_ID


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

    log_to_stderr("INFO")
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


@app.command("convert")
def convert_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Official X-Portrait checkpoint (model_state-415001.th or .safetensors).",
        ),
    ],
    out_dir: Annotated[
        str | None,
        typer.Argument(
            metavar="OUT_DIR",
            help="Folder to write (default: beside the checkpoint, <stem>-<dtype>).",
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(help="Parameter precision: fp16 (what animate runs on CUDA), bf16 or fp32."),
    ] = CUDA_DTYPE,
    model_config: Annotated[
        str | None, typer.Option(help="Official-schema model YAML (default: the official SD-1.5 config).")
    ] = None,
) -> None:
    """Convert an official checkpoint into a diffusers folder (model_index.json, unet/, reference_net/,
    global_controlnet/, local_controlnet/, vae/, scheduler/) for --model or
    XPortraitPipeline.from_pretrained.

    Written under a temporary name and renamed when complete; prints the folder's path.
    """
    from xportrait_cli.weights.convert import convert

    typer.echo(convert(checkpoint, out_dir, dtype=dtype, model_config=model_config))


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

    log_to_stderr("INFO")
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
