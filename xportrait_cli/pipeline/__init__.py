"""The windowed DDIM sampler: window plan (pure), schedule, randomness, XPortraitPipeline."""

from xportrait_cli.pipeline.pipeline_xportrait import (
    ConditioningFrames,
    TensorFrames,
    XPortraitPipeline,
    XPortraitPipelineOutput,
)
from xportrait_cli.pipeline.randomness import RandomDraws

__all__ = [
    "ConditioningFrames",
    "RandomDraws",
    "TensorFrames",
    "XPortraitPipeline",
    "XPortraitPipelineOutput",
]
