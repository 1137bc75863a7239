"""Jobs: one (portrait, driving) pair from options to a finished MP4, resumable; manifests for batches.

The names below load on first access (``lazy_loader``, PEP 562), so reading and validating a
manifest (:mod:`.manifest`, :mod:`.spec`) does not import torch or diffusers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={"runner": ["JobResult", "NetworksCache", "run_job"], "spec": ["JobSpec"]},
)
