"""xportrait: animate a portrait photo with the motion of a driving video.

An implementation of X-Portrait (ByteDance, SIGGRAPH 2024) on diffusers: a frozen Stable Diffusion 1.5
backbone with AnimateDiff-style temporal modules, an appearance (reference) net, and a global and a
local motion ControlNet, sampled with DDIM in overlapping 16-frame windows.
"""

__version__ = "0.1.0"
