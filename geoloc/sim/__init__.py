"""Stand-ins and synthetic data: local Mapillary Graph v4 and Flickr REST servers over a synthetic world of images,
and every synthetic generator the project uses (cities, worlds, crawl records, small dataset folders).

Hand-written subpackage (an HTTP server reads badly as a lesson); the lesson is `nbs/10_sim.ipynb`, the contract
tests are `tests/test_sim.py`. The contracts honoured are those of `../shared/REFERENCE.md` and of the real answers
recorded in `tests/fixtures/`.

| module | what it holds |
|---|---|
| `city` | `synthetic_city`: named Voronoi districts anywhere |
| `world` | `World`: the images, their metadata, their JPEGs, the servers' indexes |
| `render` | district looks, street frames, Flickr photos, JPEGs of real photos' size and entropy |
| `generate` | `synthetic_world`, `barcelona_world` (the paper's counts), `city_world` |
| `records` | `crawl_records`: what a complete crawl of a world returns |
| `toy` | `toy_dataset`: small dataset folders for training lessons and tests |
| `faults` | `Faults`: injected failures, decided by hashes |
| `server`, `mapillary`, `flickr` | the HTTP plumbing and the two services |
| `emulator` | `Emulator`: both services on 127.0.0.1 (threads or a child process); `geoloc emulator` |

Names are imported lazily (`from geoloc.sim import Emulator` loads only what it needs).
"""
import importlib

_WHERE = {
    'synthetic_city': 'city', 'World': 'world', 'WORLD_NOW': 'world', 'MAPILLARY_TOKEN': 'world', 'FLICKR_KEY': 'world',
    'BCN_MAPILLARY': 'world', 'BCN_FLICKR': 'world', 'FLICKR_SIZES': 'world', 'synthetic_world': 'generate',
    'barcelona_world': 'generate', 'barcelona_areas': 'generate', 'city_world': 'generate', 'Faults': 'faults',
    'Emulator': 'emulator', 'emulator_cli': 'emulator', 'crawl_records': 'records', 'toy_dataset': 'toy',
    'MosaicJPEG': 'render', 'jpeg_photo': 'render'}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE: return getattr(importlib.import_module(f'{__name__}.{_WHERE[name]}'), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__(): return sorted(list(globals()) + __all__)
