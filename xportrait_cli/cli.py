"""The ``xportrait`` command line: a thin Typer front end over the library.

Each command parses its options, calls one library function and renders the result. ``animate``
and ``batch`` are here; ``download-weights``, ``convert``, ``crop`` and ``inspect`` register on the
same app from :mod:`xportrait_cli.cli_tools`. Known errors
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

from xportrait_cli.config import OUTPUT, SAMPLING
from xportrait_cli.errors import XPortraitError
from xportrait_cli.option_names import OPTION_NAMES, default_of, option_field

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
    log_to_stderr("WARNING")
    options = resolve_options(flags, preset=preset)
    spec = JobSpec(portrait, driving, output_path(output, portrait, driving), options)
    with make_sink(choose_mode(quiet=quiet, json_lines=json_lines)) as sink:
        run_job(spec, sink, force=force, keep_work=keep_work)


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

    log_to_stderr("WARNING")
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


def log_to_stderr(level: str) -> None:
    """Library log records at ``level`` (``"INFO"``, ``"WARNING"``) and above as plain lines on
    stderr, unless logging is already set up (e.g. by a host program or pytest)."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


from xportrait_cli import cli_tools  # noqa: E402, F401 - registers download-weights, convert, crop, inspect


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
