"""``xportrait batch`` as one library call: read the manifest, then run its jobs here or on Ray.

:func:`run_manifest` checks the Ray options (``--num-gpus``/``--num-cpus`` only with ``--ray``, an
address that is not blank; their values are checked by
:func:`~xportrait_cli.jobs.ray_batch.run_batch_ray`), validates the whole manifest
(:func:`~xportrait_cli.jobs.manifest.load_manifest`) and runs the jobs with
:func:`~xportrait_cli.jobs.batch.run_batch` (in this process) or
:func:`~xportrait_cli.jobs.ray_batch.run_batch_ray` (one Ray task per job).
"""

from __future__ import annotations

import os

from xportrait_cli.errors import UsageError
from xportrait_cli.events import EventSink, null_sink


def _check_ray_options(ray: str | None, num_gpus: float | None, num_cpus: float | None) -> None:
    if ray is None and (num_gpus is not None or num_cpus is not None):
        raise UsageError("--num-gpus and --num-cpus only apply with --ray", "e.g. --ray local --num-gpus 0")
    if ray is not None and not ray.strip():
        raise UsageError("--ray needs an address", "--ray local, --ray auto or --ray host:6379")


def run_manifest(
    manifest: str | os.PathLike,
    events: EventSink = null_sink,
    *,
    preset: str | None = None,
    output_dir: str | os.PathLike | None = None,
    fmt: str | None = None,
    shard: str | None = None,
    ray: str | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    force: bool = False,
    keep_work: bool = False,
    fail_fast: bool = False,
):
    """Run every job of ``manifest`` (a file, or ``"-"`` for stdin) and return the
    :class:`~xportrait_cli.jobs.batch.BatchSummary`.

    Args:
        manifest, preset, output_dir, fmt: as for :func:`~xportrait_cli.jobs.manifest.load_manifest`.
        shard: ``"i/n"``: only jobs ``i, i+n, …`` (:meth:`~xportrait_cli.jobs.batch.Shard.parse`).
        ray: ``None`` runs the jobs here, one after another; else a Ray address (``local``,
            ``auto``, ``host:6379``, ``ray://host:10001``) for one task per job.
        num_gpus, num_cpus: resources of each Ray task (``None``: the Ray runner's defaults).
        force, keep_work, fail_fast: as for :func:`~xportrait_cli.jobs.batch.run_batch`.

    Raises:
        UsageError (exit 2): bad Ray options or shard, a manifest error (before any job runs).
        BatchInterrupted: Ctrl-C, with the summary so far.
    """
    from xportrait_cli.jobs.batch import Shard, run_batch
    from xportrait_cli.jobs.manifest import load_manifest

    _check_ray_options(ray, num_gpus, num_cpus)
    selected = Shard.parse(shard) if shard is not None else None
    jobs = load_manifest(manifest, preset=preset, output_dir=output_dir, fmt=fmt)
    common = dict(force=force, keep_work=keep_work, fail_fast=fail_fast, shard=selected)
    if ray is None:
        return run_batch(jobs, events, **common)
    from xportrait_cli.jobs.ray_batch import run_batch_ray

    given = {"num_gpus": num_gpus, "num_cpus": num_cpus}
    resources = {name: value for name, value in given.items() if value is not None}
    return run_batch_ray(jobs, events, address=ray.strip(), **resources, **common)


__all__ = ["run_manifest"]
