"""X-Portrait networks on diffusers: temporal module, reference attention, checkpoint conversion.

The names below load on first access (``lazy_loader``, PEP 562): importing a torch-free module of
the package (e.g. :mod:`.weights`' registry) does not import torch or diffusers first.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "architecture": ["Architecture", "build_architecture"],
        "loading": ["convert_checkpoint", "is_converted", "load_networks", "read_checkpoint"],
        "networks": ["XPortraitNetworks"],
    },
)
