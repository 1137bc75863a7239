"""The windowed DDIM sampler: official facts, window plan, schedule, randomness, XPortraitPipeline.

The torch-free modules (:mod:`.timesteps`, :mod:`.windows`, :mod:`.guidance`, :mod:`.defaults`) import
on their own: the names below load on first access (``lazy_loader``, PEP 562), so importing the
package or one of those modules does not import torch or diffusers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "frames": ["ConditioningFrames", "TensorFrames"],
        "loading": ["check_folder", "check_format", "convert_checkpoint", "load_pipeline"],
        "output": ["XPortraitPipelineOutput"],
        "pipeline_xportrait": ["XPortraitPipeline"],
        "randomness": ["RandomDraws"],
    },
)
