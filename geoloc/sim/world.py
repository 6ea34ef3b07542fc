"""The world the API stand-ins serve: Mapillary images and Flickr photos with their metadata, their deterministic
JPEGs, and the indexes the servers search. Built by `geoloc.sim.generate`.

Used by both services, `geoloc.sim.records` and `geoloc.sim.toy`; one `World` per emulated city."""
from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import unicodedata
from collections import OrderedDict
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import shapely
from PIL import Image
from shapely.geometry import Polygon

from .render import district_style, flickr_photo, jpeg_photo, street_frame

__all__ = ['WORLD_NOW', 'MAPILLARY_TOKEN', 'FLICKR_KEY', 'BCN_MAPILLARY', 'BCN_FLICKR', 'FLICKR_SIZES', 'SUFFIX_SIZE',
           'MLY_THUMBS', 'MLY_FIELDS', 'SECRET_PARAMS', 'BCN_SEA', 'h64', 'u01', 'fold', 'clean_tag', 'LocalMetres',
           'World']

WORLD_NOW = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp())  # the world's fixed "now" (unix s)
MAPILLARY_TOKEN = 'MLY|4242424242424242|emulator'  # the token the emulator accepts unless told otherwise
FLICKR_KEY = '0123456789abcdef0123456789abcdef'  # the Flickr API key the emulator accepts unless told otherwise

# The paper's Figure 3 (Mapillary) and Figure 2 (Flickr) tables: images per Barcelona district.
BCN_MAPILLARY = {'Sant Martí': 42_735, 'Eixample': 29_720, 'Horta-Guinardó': 22_520, 'Ciutat Vella': 20_298,
                 'Sants-Montjuïc': 18_345, 'Les Corts': 18_053, 'Sarrià-Sant Gervasi': 10_545, 'Gràcia': 9_106,
                 'Sant Andreu': 6_864, 'Nou Barris': 3_944}
BCN_FLICKR = {'Sants-Montjuïc': 5_070, 'Ciutat Vella': 4_017, 'Eixample': 3_170, 'Gràcia': 1_888, 'Les Corts': 918,
              'Horta-Guinardó': 864, 'Sant Andreu': 651, 'Sant Martí': 603, 'Sarrià-Sant Gervasi': 525,
              'Nou Barris': 463}

# Flickr size suffixes: extras name -> (URL suffix, longest side in px; None = the original)
FLICKR_SIZES = {'url_t': ('_t', 100), 'url_s': ('_m', 240), 'url_n': ('_n', 320), 'url_m': ('', 500),
                'url_z': ('_z', 640), 'url_c': ('_c', 800), 'url_l': ('_b', 1024), 'url_o': ('_o', None)}
SUFFIX_SIZE = {v[0]: v[1] for v in FLICKR_SIZES.values()}
MLY_THUMBS = {'thumb_256_url': '256', 'thumb_1024_url': '1024', 'thumb_2048_url': '2048',
               'thumb_original_url': 'original'}
MLY_FIELDS = ('id', 'computed_geometry', 'geometry', 'captured_at', 'sequence', 'compass_angle', 'is_pano',
               'camera_type', 'width', 'height', 'creator', *MLY_THUMBS)
SECRET_PARAMS = ('access_token', 'api_key')  # query parameters never logged nor used in fault keys

# Barcelona's sea (lon, lat), roughly: outside-the-city images are kept on land.
BCN_SEA = Polygon([(2.40, 41.50), (2.30, 41.47), (2.255, 41.432), (2.2285, 41.4095), (2.205, 41.389),
                    (2.192, 41.372), (2.186, 41.352), (2.178, 41.331), (2.165, 41.315), (2.13, 41.295),
                    (2.09, 41.278), (2.04, 41.258), (1.98, 41.24), (1.98, 41.10), (2.40, 41.10)])


# ------------------------------------------------------------------------------------------------ hashing helpers
def h64(*parts) -> int:
    "A stable 64-bit hash of `parts` (independent of PYTHONHASHSEED and of thread scheduling)."
    return int.from_bytes(hashlib.blake2b('|'.join(map(str, parts)).encode(), digest_size=8).digest(), 'little')

def u01(*parts) -> float:
    "A stable uniform number in [0, 1) from `parts`."
    return h64(*parts) / 2**64

def fold(s: str) -> str:
    "Lower-case, accents removed: how text and tags are compared."
    return ''.join(c for c in unicodedata.normalize('NFKD', str(s).lower()) if not unicodedata.combining(c))

def clean_tag(s: str) -> str:
    "Flickr's clean form of a tag: lower-case, letters and digits only ('Sant Martí' -> 'santmartí')."
    return ''.join(c for c in str(s).lower() if c.isalnum())


class LocalMetres:
    "Local equirectangular metres around (lat0, lon0): enough for a city."
    def __init__(self, lat0, lon0):
        self.lat0, self.lon0 = lat0, lon0
        self.kx, self.ky = 111_320.0 * math.cos(math.radians(lat0)), 110_540.0
    def xy(self, lon, lat): return (np.asarray(lon) - self.lon0) * self.kx, (np.asarray(lat) - self.lat0) * self.ky
    def lonlat(self, x, y): return np.asarray(x) / self.kx + self.lon0, np.asarray(y) / self.ky + self.lat0
    def geom(self, g): return shapely.transform(g, lambda c: np.c_[(c[:, 0] - self.lon0) * self.kx,
                                                                    (c[:, 1] - self.lat0) * self.ky])


# ------------------------------------------------------------------------------------------------ the world
class World:
    "A synthetic world: Mapillary images and Flickr photos with metadata, and their deterministic JPEGs."
    def __init__(self, areas, mapillary: pd.DataFrame, flickr: pd.DataFrame, *, seed: int = 0, now: int = WORLD_NOW,
                 city: str = 'Synthetica', style_noise: float = 0.25, cache_size: int = 512, quality: int = 85):
        self.areas, self.mapillary, self.flickr = areas, mapillary, flickr
        self.seed, self.now, self.city, self.style_noise = seed, now, city, style_noise
        self.cache_size, self.quality = cache_size, quality
        self._init_runtime()

    def _init_runtime(self):
        self._cache, self._lock = OrderedDict(), threading.Lock()
        self._rows, self._styles, self._dindex, self._mly = {}, None, None, None

    def __getstate__(self):
        d = self.__dict__.copy()
        for k in ('_cache', '_lock', '_rows', '_styles', '_dindex', '_mly'): d.pop(k, None)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._init_runtime()

    def __repr__(self):
        nd = int(self.mapillary['district'].notna().sum())
        nf = int(self.flickr['district'].notna().sum())
        return (f'World({self.city!r}: {len(self.areas)} districts; Mapillary {len(self.mapillary):,} images '
                f'({nd:,} in the city, {self.mapillary.sequence.nunique():,} sequences); Flickr {len(self.flickr):,} '
                f'photos ({nf:,} in the city); seed={self.seed})')

    def row(self, source: str, image_id) -> int:
        "Row number of `image_id` in `world.mapillary` or `world.flickr`; KeyError when unknown."
        if source not in self._rows:
            df = self.mapillary if source == 'mapillary' else self.flickr
            self._rows[source] = dict(zip(df['id'].tolist(), range(len(df))))
        return self._rows[source][str(image_id)]

    def image_size(self, source: str, image_id, size=1024) -> tuple[int, int]:
        "(width, height) in px of `image_id` rendered at `size` (longest side in px, or 'original')."
        r = self.row(source, image_id)
        if source == 'mapillary':
            m = self.mly_arrays()
            W, H = int(m['width'][r]), int(m['height'][r])
        else: W, H = int(self.flickr['o_width'].iat[r]), int(self.flickr['o_height'].iat[r])
        if size == 'original' or size is None: return W, H
        size = int(size)
        if max(W, H) <= size: return W, H
        return (size, max(1, round(H * size / W))) if W >= H else (max(1, round(W * size / H)), size)

    def render(self, source: str, # 'mapillary' or 'flickr'
               image_id, # the image's id (str)
               size=1024, # longest side in px, or 'original'
               *,
               realistic:bool=True, # real photos' size and entropy (`MosaicJPEG`); False: a plain small JPEG
              ) -> bytes: # JPEG bytes, identical for identical arguments
        "The image `image_id` as JPEG bytes, rendered on request and kept in a small LRU cache."
        key = (source, str(image_id), str(size), realistic)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        w, h = self.image_size(source, image_id, size)
        arr = self._mapillary_pixels(image_id, w / h) if source == 'mapillary' else self._flickr_pixels(image_id, w / h)
        if realistic: data = jpeg_photo(arr, w, h, h64(self.seed, source, image_id, size), quality=self.quality)
        else:
            buf = io.BytesIO()
            Image.fromarray(arr).resize((w, h), Image.BILINEAR).save(buf, 'JPEG', quality=90)
            data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.cache_size: self._cache.popitem(last=False)
        return data

    # -------------------------------------------------------------------------------------------- styles
    def _style(self, d: int) -> dict:
        "The look of district `d` (index in `areas`; -1 = outside the city)."
        if self._styles is None:
            n = len(self.areas)
            rng = np.random.default_rng([self.seed, 7919])
            hues = (np.arange(n) / max(n, 1) + rng.uniform()) % 1.0
            hues = hues[rng.permutation(n)]
            self._styles = [district_style(np.random.default_rng([self.seed, 104729, i]), hues[i]) for i in range(n)]
            self._styles.append(district_style(np.random.default_rng([self.seed, 104729, n]), None))
        return self._styles[d]

    def _district_index(self, name) -> int:
        if name is None or (isinstance(name, float) and np.isnan(name)): return -1
        if self._dindex is None:
            self._dindex = {nm: i for i, nm in enumerate(self.areas['name'])}
        return self._dindex.get(name, -1)

    def _mapillary_pixels(self, image_id, aspect) -> np.ndarray:
        r = self.row('mapillary', image_id)
        m = self.mly_arrays()
        seq, frame = m['sequence'][r], int(m['frame'][r])
        d = self._district_index(m['district'][r])
        srng = np.random.default_rng(h64(self.seed, 'seq', seq))
        n = len(self.areas)
        if d < 0: d = int(srng.integers(n))  # outside the city: borrowed looks, no class of its own
        style = self._style(d)
        if srng.uniform() < self.style_noise:  # some streets look like another district's
            style = {**style, 'palette': self._style(int(srng.integers(n)))['palette']}
        return street_frame(style, srng, frame, aspect, h64(self.seed, 'frame', image_id))

    def _flickr_pixels(self, image_id, aspect) -> np.ndarray:
        r = self.row('flickr', image_id)
        df = self.flickr
        d = self._district_index(df['district'].iat[r])
        prng = np.random.default_rng(h64(self.seed, 'photo', image_id))
        if d < 0: d = int(prng.integers(len(self.areas)))
        spot = int(df['hotspot'].iat[r])
        srng = np.random.default_rng(h64(self.seed, 'spot', spot)) if spot >= 0 else None
        return flickr_photo(self._style(d), prng, srng, aspect, indoor=int(df['geo_context'].iat[r]) == 1)

    # -------------------------------------------------------------------------------------------- indexes
    def mly_arrays(self):
        "Column arrays and a grid index of the Mapillary images (built once, used by the server)."
        if self._mly is not None: return self._mly
        df = self.mapillary
        lon, lat = df['lon'].to_numpy(float), df['lat'].to_numpy(float)
        cs = 0.004
        lon0, lat0 = lon.min() - 1e-9, lat.min() - 1e-9
        nx, ny = int((lon.max() - lon0) // cs) + 1, int((lat.max() - lat0) // cs) + 1
        cell = ((lon - lon0) // cs).astype(np.int64) * ny + ((lat - lat0) // cs).astype(np.int64)
        order = np.argsort(cell, kind='stable')
        self._mly = dict(lon=lon, lat=lat, cell=cell[order], order=order, cs=cs, lon0=lon0, lat0=lat0, nx=nx, ny=ny,
                         rank=np.random.default_rng([self.seed, 31337]).permutation(len(df)),
                         id=df['id'].to_numpy(object), captured_at=df['captured_at'].to_numpy(np.int64),
                         sequence=df['sequence'].to_numpy(object), compass=df['compass_angle'].to_numpy(float),
                         is_pano=df['is_pano'].to_numpy(bool), camera_type=df['camera_type'].to_numpy(object),
                         width=df['width'].to_numpy(np.int64), height=df['height'].to_numpy(np.int64),
                         creator=df['creator'].to_numpy(object), creator_id=df['creator_id'].to_numpy(object),
                         gps_lon=df['gps_lon'].to_numpy(float), gps_lat=df['gps_lat'].to_numpy(float),
                         frame=df['frame'].to_numpy(np.int64), district=df['district'].to_numpy(object))
        return self._mly

    def mapillary_in(self, bbox) -> np.ndarray:
        "Row numbers of the Mapillary images inside `bbox` (minLon, minLat, maxLon, maxLat), in the server's order."
        idx = self.mly_search(bbox)
        return idx[np.argsort(self.mly_arrays()['rank'][idx], kind='stable')]

    def mly_fragments(self, field) -> np.ndarray:
        "Per-image JSON text '\"field\":value' of every Mapillary image (object array), built once per field."
        frags = self._mly.setdefault('frags', {})
        if field in frags: return frags[field]
        m, j = self._mly, json.dumps
        if field in ('computed_geometry', 'geometry'):
            lo, la = (m['lon'], m['lat']) if field == 'computed_geometry' else (m['gps_lon'], m['gps_lat'])
            v = [f'"{field}":{{"type":"Point","coordinates":[{a!r},{b!r}]}}' for a, b in zip(lo.tolist(), la.tolist())]
        elif field == 'creator':
            v = [f'"creator":{{"username":{j(u)},"id":"{i}"}}' for u, i in zip(m['creator'].tolist(), m['creator_id'].tolist())]
        else:
            col = {'compass_angle': 'compass'}.get(field, field)
            v = [f'"{field}":{j(x)}' for x in m[col].tolist()]
        frags[field] = out = np.array(v, dtype=object)
        return out

    def mly_search(self, bbox) -> np.ndarray:
        "Row numbers of the Mapillary images inside `bbox`, unordered (grid index)."
        m = self.mly_arrays()
        x0, y0, x1, y1 = bbox
        cs, ny = m['cs'], m['ny']
        cx0, cx1 = max(int((x0 - m['lon0']) // cs), 0), min(int((x1 - m['lon0']) // cs), m['nx'] - 1)
        cy0, cy1 = max(int((y0 - m['lat0']) // cs), 0), min(int((y1 - m['lat0']) // cs), ny - 1)
        if cx0 > cx1 or cy0 > cy1: return np.zeros(0, np.int64)
        lo = np.arange(cx0, cx1 + 1) * ny + cy0
        s, e = np.searchsorted(m['cell'], lo), np.searchsorted(m['cell'], lo + (cy1 - cy0), side='right')
        idx = np.concatenate([m['order'][a:b] for a, b in zip(s, e)]) if len(s) else np.zeros(0, np.int64)
        lon, lat = m['lon'][idx], m['lat'][idx]
        return idx[(lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1)]
