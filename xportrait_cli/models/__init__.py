"""X-Portrait networks on diffusers: the UNet with motion modules, the appearance net, reference
attention, official checkpoint conversion.

The names below load on first access (``lazy_loader``, PEP 562): importing a torch-free module of
the package (e.g. :mod:`.weights`' registry) does not import torch or diffusers first.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "architecture": ["Architecture", "build_architecture"],
        "loading": ["components_from_checkpoint", "read_checkpoint"],
        "reference_net": ["ReferenceNet"],
        "unet": ["XPortraitUNet"],
    },
)
