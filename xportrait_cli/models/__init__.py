"""X-Portrait networks on diffusers: temporal module, reference attention, checkpoint conversion."""

from xportrait_cli.models.architecture import Architecture, build_architecture
from xportrait_cli.models.loading import convert_checkpoint, is_converted, load_networks, read_checkpoint
from xportrait_cli.models.networks import XPortraitNetworks

__all__ = [
    "Architecture",
    "XPortraitNetworks",
    "build_architecture",
    "convert_checkpoint",
    "is_converted",
    "load_networks",
    "read_checkpoint",
]
