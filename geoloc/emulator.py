"""The API stand-ins' old address: everything here moved to `geoloc.sim` (kept so that existing imports work).

New code imports from `geoloc.sim` (`Emulator`, `Faults`, `synthetic_world`, ...); this module only re-exports
those names and will be removed in a later release.
"""
from .sim.emulator import Emulator, child_main, emulator_cli  # noqa: F401
from .sim.faults import Faults  # noqa: F401
from .sim.generate import barcelona_world, synthetic_world  # noqa: F401
from .sim.world import BCN_FLICKR, BCN_MAPILLARY, FLICKR_KEY, FLICKR_SIZES, MAPILLARY_TOKEN, WORLD_NOW, World  # noqa: F401

__all__ = ['WORLD_NOW', 'MAPILLARY_TOKEN', 'FLICKR_KEY', 'BCN_MAPILLARY', 'BCN_FLICKR', 'FLICKR_SIZES', 'World',
           'synthetic_world', 'barcelona_world', 'Faults', 'Emulator', 'emulator_cli']
