"""Jobs: one (portrait, driving) pair from options to a finished MP4, resumable; manifests for batches."""

from xportrait_cli.jobs.runner import JobResult, NetworksCache, run_job
from xportrait_cli.jobs.spec import JobSpec

__all__ = ["JobResult", "JobSpec", "NetworksCache", "run_job"]
