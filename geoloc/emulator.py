"""Local stand-ins of the Mapillary Graph v4 and Flickr REST APIs, serving a synthetic world of images.

Hand-written module (an HTTP server reads badly as a lesson); the lesson is `nbs/10_emulator.ipynb`, the contract
tests are `tests/test_emulator.py`. The contracts honoured are those of `../shared/REFERENCE.md`.

- `synthetic_world(areas, ...)` / `barcelona_world()` build a `World`: Mapillary images in sequences along street-like
  paths, Flickr photos clustered at hot spots, each with a deterministic rendered JPEG (`World.render`).
- `Emulator(world, faults=Faults(...))` serves it on 127.0.0.1: `emu.mapillary_url` (Graph: `/images`, `/{id}`,
  signed expiring thumbnails) and `emu.flickr_url` (`/services/rest`, static photo URLs), with faults decided from a
  hash of (seed, request, attempt) so that two runs with the same seed see the same faults and a retry re-rolls.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import unicodedata
import urllib.request
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, fields as dc_fields
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from PIL import Image
from shapely.geometry import Polygon, box

__all__ = ['WORLD_NOW', 'MAPILLARY_TOKEN', 'FLICKR_KEY', 'BCN_MAPILLARY', 'BCN_FLICKR', 'FLICKR_SIZES', 'World',
           'synthetic_world', 'barcelona_world', 'Faults', 'Emulator', 'emulator_cli']

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
_SUFFIX_SIZE = {v[0]: v[1] for v in FLICKR_SIZES.values()}
_MLY_THUMBS = {'thumb_256_url': '256', 'thumb_1024_url': '1024', 'thumb_2048_url': '2048',
               'thumb_original_url': 'original'}
_MLY_FIELDS = ('id', 'computed_geometry', 'geometry', 'captured_at', 'sequence', 'compass_angle', 'is_pano',
               'camera_type', 'width', 'height', 'creator', *_MLY_THUMBS)
_SECRETS = ('access_token', 'api_key')  # query parameters never logged nor used in fault keys

# Barcelona's sea (lon, lat), roughly: outside-the-city images are kept on land.
_BCN_SEA = Polygon([(2.40, 41.50), (2.30, 41.47), (2.255, 41.432), (2.2285, 41.4095), (2.205, 41.389),
                    (2.192, 41.372), (2.186, 41.352), (2.178, 41.331), (2.165, 41.315), (2.13, 41.295),
                    (2.09, 41.278), (2.04, 41.258), (1.98, 41.24), (1.98, 41.10), (2.40, 41.10)])


# ------------------------------------------------------------------------------------------------ hashing helpers
def _h64(*parts) -> int:
    "A stable 64-bit hash of `parts` (independent of PYTHONHASHSEED and of thread scheduling)."
    return int.from_bytes(hashlib.blake2b('|'.join(map(str, parts)).encode(), digest_size=8).digest(), 'little')

def _u01(*parts) -> float:
    "A stable uniform number in [0, 1) from `parts`."
    return _h64(*parts) / 2**64

def _fold(s: str) -> str:
    "Lower-case, accents removed: how text and tags are compared."
    return ''.join(c for c in unicodedata.normalize('NFKD', str(s).lower()) if not unicodedata.combining(c))

def _clean_tag(s: str) -> str:
    "Flickr's clean form of a tag: lower-case, letters and digits only ('Sant Martí' -> 'santmartí')."
    return ''.join(c for c in str(s).lower() if c.isalnum())


class _Proj:
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
                 city: str = 'Synthetica', style_noise: float = 0.25, cache_size: int = 2048, quality: int = 80):
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
            m = self._mly_arrays()
            W, H = int(m['width'][r]), int(m['height'][r])
        else: W, H = int(self.flickr['o_width'].iat[r]), int(self.flickr['o_height'].iat[r])
        if size == 'original' or size is None: return W, H
        size = int(size)
        if max(W, H) <= size: return W, H
        return (size, max(1, round(H * size / W))) if W >= H else (max(1, round(W * size / H)), size)

    def render(self, source: str, # 'mapillary' or 'flickr'
               image_id, # the image's id (str)
               size=1024, # longest side in px, or 'original'
              ) -> bytes: # JPEG bytes, identical for identical arguments
        "The image `image_id` as JPEG bytes, rendered on request and kept in a small LRU cache."
        key = (source, str(image_id), str(size))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        w, h = self.image_size(source, image_id, size)
        arr = self._mapillary_pixels(image_id, w / h) if source == 'mapillary' else self._flickr_pixels(image_id, w / h)
        bh, bw = arr.shape[:2]
        f = w // bw
        if f % 8 == 0 and f * bw == w and f * bh == h and bh % 2 == 0 and bw % 2 == 0:
            data = _jpeg_blocks(arr if f == 8 else arr.repeat(f // 8, 0).repeat(f // 8, 1))  # fast path
        else:
            im = Image.fromarray(arr)
            im = im.resize((w, h), Image.NEAREST if w >= im.width else Image.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, 'JPEG', quality=self.quality, subsampling=2)
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
            self._styles = [_district_style(np.random.default_rng([self.seed, 104729, i]), hues[i]) for i in range(n)]
            self._styles.append(_district_style(np.random.default_rng([self.seed, 104729, n]), None))
        return self._styles[d]

    def _district_index(self, name) -> int:
        if name is None or (isinstance(name, float) and np.isnan(name)): return -1
        if self._dindex is None:
            self._dindex = {nm: i for i, nm in enumerate(self.areas['name'])}
        return self._dindex.get(name, -1)

    def _mapillary_pixels(self, image_id, aspect) -> np.ndarray:
        r = self.row('mapillary', image_id)
        m = self._mly_arrays()
        seq, frame = m['sequence'][r], int(m['frame'][r])
        d = self._district_index(m['district'][r])
        srng = np.random.default_rng(_h64(self.seed, 'seq', seq))
        n = len(self.areas)
        if d < 0: d = int(srng.integers(n))  # outside the city: borrowed looks, no class of its own
        style = self._style(d)
        if srng.uniform() < self.style_noise:  # some streets look like another district's
            style = {**style, 'palette': self._style(int(srng.integers(n)))['palette']}
        return _street_frame(style, srng, frame, aspect, _h64(self.seed, 'frame', image_id))

    def _flickr_pixels(self, image_id, aspect) -> np.ndarray:
        r = self.row('flickr', image_id)
        df = self.flickr
        d = self._district_index(df['district'].iat[r])
        prng = np.random.default_rng(_h64(self.seed, 'photo', image_id))
        if d < 0: d = int(prng.integers(len(self.areas)))
        spot = int(df['hotspot'].iat[r])
        srng = np.random.default_rng(_h64(self.seed, 'spot', spot)) if spot >= 0 else None
        return _flickr_photo(self._style(d), prng, srng, aspect, indoor=int(df['geo_context'].iat[r]) == 1)

    # -------------------------------------------------------------------------------------------- indexes
    def _mly_arrays(self):
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
        idx = self._mly_search(bbox)
        return idx[np.argsort(self._mly_arrays()['rank'][idx], kind='stable')]

    def _mly_fragments(self, field) -> np.ndarray:
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

    def _mly_search(self, bbox) -> np.ndarray:
        "Row numbers of the Mapillary images inside `bbox`, unordered (grid index)."
        m = self._mly_arrays()
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


def _district_style(rng, hue) -> dict:
    "Palette and structure of one district's streets (hue None: a muted outside-the-city look)."
    import colorsys
    if hue is None: hue, sat = rng.uniform(), 0.12
    else: sat = rng.uniform(0.35, 0.75)
    def col(h, s, v): return np.array(colorsys.hsv_to_rgb(h % 1, min(max(s, 0), 1), min(max(v, 0), 1))) * 255
    palette = np.stack([col(hue + rng.normal(0, 0.04), sat * rng.uniform(0.6, 1.2), rng.uniform(0.45, 0.9))
                        for _ in range(3)])
    return dict(palette=palette,
                window=col(hue + 0.5, rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.95)),
                sky=col(rng.uniform(0.52, 0.66), rng.uniform(0.1, 0.5), rng.uniform(0.7, 1.0)),
                road=col(hue, 0.05, rng.uniform(0.25, 0.5)),
                height=(rng.uniform(0.25, 0.45), rng.uniform(0.5, 0.85)),  # building height, fraction of the frame
                bwidth=(int(rng.integers(8, 16)), int(rng.integers(18, 40))),  # building width, base px
                wper=(int(rng.integers(3, 8)), int(rng.integers(4, 9))),  # window period x, y (base px)
                wfill=rng.uniform(0.3, 0.7), trees=rng.uniform(0, 0.5), ground=rng.uniform(0.62, 0.8),
                stripes=bool(rng.uniform() < 0.5))


def _street_frame(style, srng, frame, aspect, frame_hash) -> np.ndarray:
    "A street-level frame, base resolution (128 px wide): a facade strip seen from a moving car."
    W = 128; H = max(16, round(W / aspect))
    nb = 48
    widths = srng.integers(style['bwidth'][0], style['bwidth'][1] + 1, nb)
    edges = np.cumsum(widths); starts = edges - widths
    heights = srng.uniform(*style['height'], nb) * H
    colors = (style['palette'][srng.integers(0, 3, nb)] * srng.uniform(0.8, 1.15, (nb, 1))).astype(np.float32)
    win_on = srng.uniform(size=nb) < 0.85
    tree_at = srng.uniform(size=nb) < style['trees']
    speed = srng.uniform(1.0, 3.0)
    light = srng.uniform(0.75, 1.15)
    x = (int(frame * speed) + np.arange(W)) % int(edges[-1])
    b = np.searchsorted(edges, x, side='right')
    ground = int(H * style['ground'])
    yy = np.arange(H)[:, None]
    sky = (style['sky'][None, :] * (0.85 + 0.3 * np.arange(H)[:, None] / H)).astype(np.float32)
    top = (ground - heights[b])[None, :]
    bld = (yy >= top) & (yy < ground)
    img = np.where(bld[..., None], colors[b][None, :, :], sky[:, None, :])
    px, py = style['wper']
    lx = x - starts[b]
    wx = (lx % px) < max(1, round(px * style['wfill']))
    wy = ((ground - yy) % py) < max(1, round(py * style['wfill']))
    win = bld & wx[None, :] & wy & win_on[b][None, :] & (yy > top + 1) & (yy < ground - 2)
    img[win] = style['window']
    img[ground:] = style['road']
    if style['stripes']:
        lane = (yy[ground:, 0] == ground + (H - ground) // 2)
        img[ground:][lane] = np.where(((np.arange(W) + int(frame * speed)) % 12 < 6)[:, None], 235, style['road'])
    else:
        img[ground:ground + 2] = style['road'] * 1.4
    trees = tree_at[b] & ((lx % 20) < 9)
    tmask = trees[None, :] & (yy >= ground - H * 0.3) & (yy < ground - 2)
    img[tmask] = img[tmask] * 0.3 + np.array([28, 77, 31.5], np.float32)  # foliage, 70% opaque
    img *= np.float32(light * (0.97 + 0.06 * (frame_hash % 10_007) / 10_007))  # a little flicker per frame
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _flickr_photo(style, prng, srng, aspect, indoor=False) -> np.ndarray:
    "A Flickr-like photo, base resolution: a subject (the hot spot's landmark, or people) on a framed background."
    L = 128
    W, H = (L, max(16, round(L / aspect))) if aspect >= 1 else (max(16, round(L * aspect)), L)
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    c0 = style['palette'][prng.integers(3)] * 0.5 + prng.uniform(0, 255, 3) * 0.5
    c1 = style['sky'] * 0.6 + prng.uniform(0, 255, 3) * 0.4
    if indoor: c0, c1 = c0 * 0.5 + np.array([120, 90, 60]) * 0.5, c1 * 0.4 + np.array([90, 70, 50]) * 0.6
    t = yy[..., None]
    img = c1 * (1 - t) + c0 * t
    if srng is not None:  # a landmark: the same shape at every photo of a hot spot, framed differently
        kind = srng.integers(4)
        lc = style['palette'][srng.integers(3)] * 0.5 + srng.uniform(0, 255, 3) * 0.5
        cx, cy = 0.5 + prng.normal(0, 0.12), 0.55 + prng.normal(0, 0.06)
        z = prng.uniform(0.6, 1.4) * srng.uniform(0.7, 1.2)
        dx, dy = (xx - cx) / z, (yy - cy) / z
        if kind == 0: m = (abs(dx) < 0.08) & (dy > -0.45) & (dy < 0.45)                 # tower
        elif kind == 1: m = (dx ** 2 + (dy + 0.05) ** 2 < 0.09) & (dy < 0.1) | ((abs(dx) < 0.3) & (dy > 0.1) & (dy < 0.4))  # dome
        elif kind == 2: m = (abs(dx) < 0.35) & (dy > -0.2) & (dy < 0.4) & ~((dx ** 2 + (dy - 0.25) ** 2) < 0.04)  # arch
        else: m = (abs(dx) + abs(dy) * 0.7 < 0.3)                                         # sculpture
        img[m] = lc * (0.8 + 0.4 * yy[m, None])
    else:  # people, or a close-up
        for _ in range(int(prng.integers(1, 5))):
            cx, cy, rr = prng.uniform(0.1, 0.9), prng.uniform(0.4, 0.8), prng.uniform(0.05, 0.15)
            m = ((xx - cx) / rr) ** 2 + ((yy - cy) / (rr * 2.2)) ** 2 < 1
            img[m] = prng.uniform(30, 230, 3)
    vig = 1 - 0.45 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * prng.uniform(0.5, 2)
    img = img * vig[..., None] * prng.uniform(0.7, 1.2)
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ fast JPEG
# Street frames are rendered at 1/8 (or 1/16) of a thumbnail's size and scaled up by whole blocks, so every 8x8 block
# of the JPEG is flat: only its DC coefficient is non-zero. Writing such a baseline JPEG directly (numpy Huffman
# coding of the DC differences, an EOB per block) costs a fraction of PIL's resize + encode of the full-size image.
def _canonical_codes(bits):
    "Canonical Huffman codes and lengths of symbols 0..n-1 from the JPEG `bits` counts (lengths 1-16)."
    codes, lens, code = [], [], 0
    for L, n in enumerate(bits, 1):
        for _ in range(n): codes.append(code); lens.append(L); code += 1
        code <<= 1
    return codes, lens

_DC_BITS = ([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # Annex K
_DC_CODE = np.array([_canonical_codes(b)[0] for b in _DC_BITS], np.int64)  # [luma/chroma, category]
_DC_LEN = np.array([_canonical_codes(b)[1] for b in _DC_BITS], np.int64)
_BITLEN = np.array([int(v).bit_length() for v in range(256)], np.int64)
_CHROMA = np.array([0, 0, 0, 0, 1, 1])  # component of each block of a 4:2:0 MCU: Y Y Y Y Cb Cr

def _segment(marker, payload): return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, 'big') + payload

def _jpeg_header(w, h) -> bytes:
    q = bytes([8] + [16] * 63)  # DC step 8: a flat block's DC is exactly its level - 128
    one_eob = bytes([1] + [0] * 15) + b'\x00'  # AC tables hold one symbol, EOB, coded '0'
    dht = (b'\x00' + bytes(_DC_BITS[0]) + bytes(range(12)) + b'\x10' + one_eob
           + b'\x01' + bytes(_DC_BITS[1]) + bytes(range(12)) + b'\x11' + one_eob)
    return (b'\xff\xd8' + _segment(0xE0, b'JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00')
            + _segment(0xDB, b'\x00' + q + b'\x01' + q)
            + _segment(0xC0, bytes([8]) + h.to_bytes(2, 'big') + w.to_bytes(2, 'big')
                       + bytes([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]))
            + _segment(0xC4, dht) + _segment(0xDA, bytes([3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0])))

def _jpeg_blocks(base: np.ndarray) -> bytes:
    "Baseline 4:2:0 JPEG of `base` (H, W, 3 uint8; H, W even) scaled up 8x, each pixel a flat 8x8 block."
    H, W, _ = base.shape
    x = base.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    Y = 0.299 * r + 0.587 * g + 0.114 * b - 128
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    def quarter(c): return (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]).ravel() * 0.25
    mh, mw = H // 2, W // 2
    y4 = Y.reshape(mh, 2, mw, 2).transpose(0, 2, 1, 3).reshape(-1, 4)
    dy = np.diff(np.rint(y4.ravel()).astype(np.int64), prepend=0).reshape(-1, 4)  # DC predicted from the previous
    dcb = np.diff(np.rint(quarter(cb)).astype(np.int64), prepend=0)                # block of the same component
    dcr = np.diff(np.rint(quarter(cr)).astype(np.int64), prepend=0)
    d = np.concatenate([dy, dcb[:, None], dcr[:, None]], 1).ravel()
    cat = _BITLEN[np.abs(d)]
    comp = np.tile(_CHROMA, mh * mw)
    val = (((_DC_CODE[comp, cat] << cat) | ((d - (d < 0)) & ((1 << cat) - 1))) << 1)  # code, extra bits, EOB '0'
    ln = _DC_LEN[comp, cat] + cat + 1
    off = np.cumsum(ln) - ln
    total = int(off[-1] + ln[-1]); nbytes = (total + 7) // 8
    pos = off >> 3
    win = val << (24 - ln - (off & 7))  # each code inside a 3-byte window starting at byte `pos`
    data = np.zeros(nbytes + 2)
    for k in range(3):  # codes never share bits, so adding bytes is OR-ing them
        data += np.bincount(pos + k, weights=(win >> (16 - 8 * k)) & 0xFF, minlength=nbytes + 2)
    data = data[:nbytes].astype(np.uint8)
    if nbytes * 8 > total: data[-1] |= (1 << (nbytes * 8 - total)) - 1  # pad with 1-bits
    ff = np.flatnonzero(data == 0xFF)
    if len(ff): data = np.insert(data, ff + 1, 0)  # byte stuffing
    return _jpeg_header(W * 8, H * 8) + data.tobytes() + b'\xff\xd9'


# ------------------------------------------------------------------------------------------------ generation
def _exact_counts(total: int, weights) -> np.ndarray:
    "Split `total` into integers proportional to `weights` (largest remainder): sums exactly to `total`."
    w = np.asarray(weights, float); w = w / w.sum() * total
    out = np.floor(w).astype(int)
    out[np.argsort(-(w - out), kind='stable')[:total - out.sum()]] += 1
    return out


def _sample_in(rng, region, bounds, n, max_rounds=200):
    "n uniform points (x, y arrays) inside the prepared shapely `region` (metres)."
    xs, ys, got = [], [], 0
    for _ in range(max_rounds):
        if got >= n: break
        m = max(64, 2 * (n - got))
        x, y = rng.uniform(bounds[0], bounds[2], m), rng.uniform(bounds[1], bounds[3], m)
        k = shapely.contains_xy(region, x, y)
        xs.append(x[k]); ys.append(y[k]); got += int(k.sum())
    if got < n: raise ValueError('synthetic_world: a region is too thin to hold points; check the areas')
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def _sequences(rng, region, bounds, n, *, grid_angle, spacing, regular, first_seq):
    "Street-like sequences inside `region` (metres) until exactly `n` frames: arrays per frame."
    out, got, seq = [], 0, first_seq
    for _ in range(10_000):
        if got >= n: break
        m = int(np.clip((n - got) / 30 + 8, 8, 4000))
        L = rng.integers(20, 61, m)
        sx, sy = rng.uniform(bounds[0], bounds[2], m), rng.uniform(bounds[1], bounds[3], m)
        follows = rng.uniform(size=m) < regular
        k = rng.integers(0, 4, m)
        head = np.where(follows, grid_angle + 90 * k + rng.normal(0, 1.5, m), rng.uniform(0, 360, m)) % 360
        # snap grid-following sequences onto a street line of the district's grid
        t = np.radians(grid_angle)
        e1, e2 = np.array([np.sin(t), np.cos(t)]), np.array([np.cos(t), -np.sin(t)])
        u, v = sx * e1[0] + sy * e1[1], sx * e2[0] + sy * e2[1]
        lane = rng.choice([-4.0, 4.0], m)
        along1 = k % 2 == 0
        v = np.where(follows & along1, np.round(v / spacing) * spacing + lane, v)
        u = np.where(follows & ~along1, np.round(u / spacing) * spacing + lane, u)
        sx, sy = u * e1[0] + v * e2[0], u * e1[1] + v * e2[1]
        step = rng.uniform(3, 8, m)
        si = np.repeat(np.arange(m), L)
        frame = np.arange(L.sum()) - np.repeat(np.cumsum(L) - L, L)
        a = np.radians(head[si])
        wob = rng.normal(0, 0.4, len(si))
        x = sx[si] + frame * step[si] * np.sin(a) + wob * np.cos(a)
        y = sy[si] + frame * step[si] * np.cos(a) - wob * np.sin(a)
        keep = shapely.contains_xy(region, x, y)
        if not keep.any(): continue
        comp = (head[si] + rng.normal(0, 2.0, len(si))) % 360
        out.append(dict(x=x[keep], y=y[keep], seq=(si + seq)[keep], frame=frame[keep], compass=comp[keep],
                        step=step[si][keep]))
        got += int(keep.sum()); seq += m
    if got < n: raise ValueError('synthetic_world: could not place the Mapillary sequences; check the areas')
    cat = {k: np.concatenate([o[k] for o in out])[:n] for k in out[0]}
    return cat, seq


def _hotspot_points(rng, region, bounds, n, *, first_spot, spread=(40, 250), uniform=0.25):
    "Flickr-like points clustered at hot spots inside `region` (metres); exactly `n`."
    k = int(np.clip(2 + n // 400, 2, 14))
    cx, cy = _sample_in(rng, region, bounds, k)
    w = 1 / np.arange(1, k + 1) ** 0.8
    sd = rng.uniform(*spread, k)
    xs, ys, spots, got = [], [], [], 0
    for _ in range(1000):
        if got >= n: break
        m = max(64, 2 * (n - got))
        s = rng.choice(k, m, p=w / w.sum())
        uni = rng.uniform(size=m) < uniform
        x = np.where(uni, rng.uniform(bounds[0], bounds[2], m), cx[s] + rng.normal(0, 1, m) * sd[s])
        y = np.where(uni, rng.uniform(bounds[1], bounds[3], m), cy[s] + rng.normal(0, 1, m) * sd[s])
        keep = shapely.contains_xy(region, x, y)
        xs.append(x[keep]); ys.append(y[keep]); spots.append(np.where(uni, -1, s + first_spot)[keep])
        got += int(keep.sum())
    if got < n: raise ValueError('synthetic_world: could not place the Flickr photos; check the areas')
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n], np.concatenate(spots)[:n], first_spot + k


_B62 = np.array(list('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'))

def _seq_ids(rng, n) -> np.ndarray:
    "Mapillary-like sequence keys (22 characters of base62)."
    return np.array([''.join(r) for r in _B62[rng.integers(0, 62, (n, 22))]], dtype=object)

def _unique_ints(rng, n, lo, hi) -> np.ndarray:
    "`n` distinct random integers in [lo, hi), in random order."
    v = np.unique(rng.integers(lo, hi, int(n * 1.02) + 16))
    while len(v) < n: v = np.unique(np.r_[v, rng.integers(lo, hi, n)])
    return rng.permutation(v)[:n]


_WORDS = ['street', 'architecture', 'city', 'night', 'travel', 'europe', 'spain', 'catalunya', 'people', 'sunset',
          'building', 'urban', 'art', 'square', 'church', 'beach', 'park', 'food', 'market', 'blackandwhite',
          'holiday', 'tourism', 'cityscape', 'summer', 'streetphotography', 'sky', 'canon', 'nikon']
_FIRST = ['Anna', 'Marc', 'Laura', 'Jordi', 'Marta', 'Pau', 'Julia', 'David', 'Elena', 'Sergi', 'Nuria', 'Tom',
          'Sophie', 'Lucas', 'Emma', 'Hiro', 'Olga', 'Ivan', 'Chloe', 'Ben']
_LAST = ['Garcia', 'Puig', 'Vidal', 'Smith', 'Martin', 'Ferrer', 'Lopez', 'Schmidt', 'Rossi', 'Dubois', 'Sato',
         'Novak', 'Costa', 'Brown', 'Serra', 'Roca']


def synthetic_world(areas:gpd.GeoDataFrame, # districts, as from `geoloc.geojson.load_areas` / `synthetic_city`
                    *,
                    mapillary:int=20_000, # Mapillary images inside the city (split by a random density per district)
                    flickr:int=5_000, # geotagged Flickr photos inside the city
                    seed:int=0, # same seed, same world
                    outside:float=0.2, # extra Mapillary images outside the city, as a fraction of `mapillary`
                    flickr_outside:float=0.18, # extra Flickr photos outside the city, fraction of `flickr` (0.18 -> 15% of all)
                    no_geo:float=0.05, # extra Flickr photos without geotags, fraction of `flickr`
                    recent:float=0.004, # fraction of Flickr photos uploaded in the world's last 12 hours
                    mapillary_counts:dict=None, # exact in-city images per district name (overrides `mapillary`)
                    flickr_counts:dict=None, # exact in-city geotagged photos per district name (overrides `flickr`)
                    city:str='Synthetica', # the city's name (a Flickr tag)
                    land=None, # shapely (Multi)Polygon, WGS84: where outside-the-city images may lie (default: anywhere)
                    ring_km:float=3.0, # outside images lie within this distance of the city
                    margin_m:float=15.0, # points keep this far from district borders (labels robust to simplification)
                    now:int=WORLD_NOW, # the world's "now" (unix s): Flickr uploads end here
                    style_noise:float=0.25, # share of sequences painted in another district's palette
                   ) -> World:
    "A synthetic world over `areas`: Mapillary sequences and Flickr photos, with metadata, deterministic by seed."
    if len(areas) < 1: raise ValueError('synthetic_world needs at least one area. Fix: pass load_areas(...) output.')
    from geoloc.geojson import city_boundary
    names = list(areas['name'])
    rng = np.random.default_rng(seed)
    cityg = city_boundary(areas)
    c = cityg.centroid
    P = _Proj(c.y, c.x)
    dist_xy = [P.geom(g) for g in areas.geometry]
    inner = [g.buffer(-margin_m) for g in dist_xy]
    for g in inner: shapely.prepare(g)
    city_xy = P.geom(cityg)
    bx0, by0, bx1, by1 = city_xy.bounds
    ring = city_xy.buffer(ring_km * 1000).difference(city_xy.buffer(margin_m))
    ring = ring.intersection(box(bx0 - 1500, by0 - 1500, bx1 + 1500, by1 + 1500))
    if land is not None: ring = ring.intersection(P.geom(land))
    shapely.prepare(ring)

    def counts(total, given, kind, weights):
        if given is None: return _exact_counts(total, weights)
        missing = [k for k in given if k not in names]
        if missing: raise ValueError(f'synthetic_world: {kind} names {missing} are not among the areas {names}. '
                                     'Fix: use the names in areas["name"].')
        return np.array([int(given.get(nm, 0)) for nm in names])
    area = np.array([g.area for g in dist_xy])
    mc = counts(mapillary, mapillary_counts, 'mapillary_counts', area * rng.lognormal(0, 0.6, len(names)))
    fc = counts(flickr, flickr_counts, 'flickr_counts', area * rng.lognormal(0, 0.9, len(names)))

    # Mapillary: sequences per district, then outside the city
    parts, nseq, dist = [], 0, []
    for i, g in enumerate(inner):
        if mc[i] == 0: continue
        drng = np.random.default_rng([seed, 1, i])
        p, nseq = _sequences(drng, g, g.bounds, int(mc[i]), grid_angle=drng.uniform(0, 90),
                             spacing=drng.uniform(70, 160), regular=drng.uniform(0.3, 0.95), first_seq=nseq)
        parts.append(p); dist += [names[i]] * int(mc[i])
    n_out = int(round(outside * mc.sum()))
    if n_out:
        orng = np.random.default_rng([seed, 1, 99999])
        p, nseq = _sequences(orng, ring, ring.bounds, n_out, grid_angle=orng.uniform(0, 90), spacing=120,
                             regular=0.5, first_seq=nseq)
        parts.append(p); dist += [None] * n_out
    mly = _mapillary_frame(rng, parts, dist, nseq, P, now)

    # Flickr: hot spots per district, outside the city, and photos without geotags
    fparts, fdist, spot = [], [], 0
    for i, g in enumerate(inner):
        if fc[i] == 0: continue
        x, y, s, spot = _hotspot_points(np.random.default_rng([seed, 2, i]), g, g.bounds, int(fc[i]), first_spot=spot)
        fparts.append((x, y, s)); fdist += [names[i]] * int(fc[i])
    n_fout = int(round(flickr_outside * fc.sum()))
    if n_fout:
        x, y, s, spot = _hotspot_points(np.random.default_rng([seed, 2, 99999]), ring, ring.bounds, n_fout,
                                        first_spot=spot, uniform=0.5)
        fparts.append((x, y, s)); fdist += [None] * n_fout
    n_ng = int(round(no_geo * fc.sum()))
    fparts.append((np.full(n_ng, np.nan), np.full(n_ng, np.nan), np.full(n_ng, -1))); fdist += [None] * n_ng
    fl = _flickr_frame(rng, fparts, fdist, P, names, city, now, recent)
    return World(areas.reset_index(drop=True), mly, fl, seed=seed, now=now, city=city, style_noise=style_noise)


def _mapillary_frame(rng, parts, dist, nseq, P, now) -> pd.DataFrame:
    "The Mapillary table from generated sequences."
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(cat['x'])
    lon, lat = P.lonlat(cat['x'], cat['y'])
    glon, glat = P.lonlat(cat['x'] + rng.normal(0, 3, n), cat['y'] + rng.normal(0, 3, n))
    sid = _seq_ids(rng, nseq)
    # per sequence: start time, frame interval, camera, creator
    t0 = rng.integers(int(datetime(2014, 1, 1, tzinfo=timezone.utc).timestamp()) * 1000, (now - 30 * 86400) * 1000,
                      nseq)
    dt = rng.integers(800, 3000, nseq)
    cams = np.array([(2048, 1536), (1920, 1080), (2560, 1440), (1600, 1200), (4096, 2048)])
    pano = rng.uniform(size=nseq) < 0.08
    cam = np.where(pano, 4, rng.integers(0, 4, nseq))
    ctype = np.where(pano, 'spherical', np.where(rng.uniform(size=nseq) < 0.03, 'fisheye', 'perspective'))
    ncreators = max(3, nseq // 40)
    creator = rng.zipf(1.6, nseq) % ncreators
    cnames = np.array([f'{_FIRST[i % len(_FIRST)].lower()}_{_LAST[(i // 3) % len(_LAST)].lower()}{i}'
                       for i in range(ncreators)], dtype=object)
    cids = _unique_ints(rng, ncreators, 10**14, 10**15).astype(str).astype(object)
    s, f = cat['seq'], cat['frame']
    return pd.DataFrame({
        'id': _unique_ints(rng, n, 10**14, 10**16).astype(str).astype(object),
        'lat': np.round(lat, 7), 'lon': np.round(lon, 7),
        'captured_at': t0[s] + f * dt[s] + rng.integers(0, 200, n),
        'sequence': sid[s], 'compass_angle': np.round(cat['compass'], 2), 'is_pano': pano[s],
        'width': cams[cam[s], 0], 'height': cams[cam[s], 1], 'creator': cnames[creator[s]],
        'creator_id': cids[creator[s]], 'camera_type': ctype[s].astype(object),
        'district': pd.array(dist, dtype=object), 'frame': f, 'gps_lat': np.round(glat, 7),
        'gps_lon': np.round(glon, 7)})


def _flickr_frame(rng, parts, dist, P, names, city, now, recent) -> pd.DataFrame:
    "The Flickr table from generated points."
    x = np.concatenate([p[0] for p in parts]); y = np.concatenate([p[1] for p in parts])
    spot = np.concatenate([p[2] for p in parts]).astype(int)
    n = len(x)
    lon, lat = P.lonlat(x, y)
    geo = ~np.isnan(lon)
    dist = np.array(dist, dtype=object)
    # owners: a few prolific, many occasional; each with a default licence
    nown = max(5, n // 12)
    owner_of = rng.zipf(1.5, n) % nown
    nsid = np.array([f'{v}@N0{int(k)}' for v, k in zip(_unique_ints(rng, nown, 10**7, 2 * 10**8),
                                                      rng.integers(0, 9, nown))], dtype=object)
    oname = np.array([f'{_FIRST[i % 20]} {_LAST[(i * 7 + 3) % 16]}' if i % 3 else f'{_FIRST[i % 20].lower()}{i}'
                      for i in range(nown)], dtype=object)
    lic_ids = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
    lic_p = np.array([55, 3, 5, 3, 12, 5, 3, 2, .5, 3, 1, 4, 2, .5, .5, .5, .5]); lic_p = lic_p / lic_p.sum()
    own_lic = rng.choice(lic_ids, nown, p=lic_p)
    lic = np.where(rng.uniform(size=n) < 0.85, own_lic[owner_of], rng.choice(lic_ids, n, p=lic_p))
    # dates: uploads span 15 years before "now", a few in the last 12 hours; ids grow with upload time
    up = now - (rng.uniform(size=n) * 15 * 365.25 * 86400).astype(np.int64)
    rec = rng.uniform(size=n) < recent
    up = np.where(rec, now - rng.integers(60, 12 * 3600, n), up)
    taken = up - np.minimum(rng.exponential(20 * 86400, n), 2e8).astype(np.int64)
    unknown = rng.uniform(size=n) < 0.04
    taken = np.where(unknown, up, taken)
    ids = np.sort(_unique_ints(rng, n, 4 * 10**9, 5.5 * 10**10))[np.argsort(np.argsort(up, kind='stable'))]
    acc = np.where(geo, rng.choice([16, 15, 14, 13, 12, 11, 6], n, p=[.55, .12, .1, .08, .06, .07, .02]), 0)
    ctx = np.where(geo, rng.choice([0, 1, 2], n, p=[.5, .1, .4]), 0)
    # tags: the city (often), the district (sometimes, sometimes the wrong one), and common words
    clean = [_clean_tag(nm) for nm in names]
    ctag = _clean_tag(city)
    tags, titles = [], []
    u = rng.uniform(size=(n, 4))
    words = rng.integers(0, len(_WORDS), (n, 4)); nwords = rng.integers(0, 5, n)
    wrong = rng.integers(0, len(names), n)
    for i in range(n):
        t = []
        d = dist[i]
        if u[i, 0] < 0.7: t.append(ctag)
        if d is not None and u[i, 1] < 0.5: t.append(clean[names.index(d)])
        if u[i, 2] < 0.08 or (d is None and u[i, 2] < 0.2): t.append(clean[wrong[i]])
        t += [_WORDS[w] for w in words[i, :nwords[i]]]
        tags.append(' '.join(dict.fromkeys(t)))
        if u[i, 3] < 0.45: titles.append(f'IMG_{(ids[i] // 7) % 10000:04d}')
        elif u[i, 3] < 0.7 and d is not None: titles.append(f'{d}, {city}')
        elif u[i, 3] < 0.8: titles.append(f'DSC{(ids[i] // 3) % 100000:05d}')
        else: titles.append(f'{_WORDS[words[i, 0]].capitalize()} in {city}')
    aspects = np.array([(4, 3), (3, 2), (16, 9), (1, 1), (3, 4), (2, 3)])
    a = aspects[rng.choice(6, n, p=[.35, .3, .1, .05, .1, .1])]
    longest = rng.choice([1600, 2048], n)
    ow = np.where(a[:, 0] >= a[:, 1], longest, np.round(longest * a[:, 0] / a[:, 1])).astype(int)
    oh = np.where(a[:, 0] >= a[:, 1], np.round(longest * a[:, 1] / a[:, 0]), longest).astype(int)
    interest = rng.lognormal(0, 1, n) * np.where(spot >= 0, 2.0, 1.0)
    return pd.DataFrame({
        'id': ids.astype(str).astype(object), 'lat': np.round(lat, 6), 'lon': np.round(lon, 6), 'accuracy': acc, 'geo_context': ctx,
        'taken': taken, 'uploaded': up, 'owner': nsid[owner_of], 'owner_name': oname[owner_of], 'license': lic,
        'tags': np.array(tags, dtype=object), 'title': np.array(titles, dtype=object),
        'district': pd.array(dist, dtype=object), 'hotspot': spot, 'taken_unknown': unknown,
        'secret': np.array([f'{v:010x}' for v in rng.integers(0, 16**10, n)], dtype=object),
        'server': rng.choice(['65535', '7372', '4812', '3921'], n, p=[.7, .1, .1, .1]).astype(object),
        'farm': rng.choice([66, 8, 5, 4], n),
        'o_secret': np.array([f'{v:010x}' for v in rng.integers(0, 16**10, n)], dtype=object),
        'o_width': ow, 'o_height': oh, 'can_download': rng.uniform(size=n) < 0.7,
        'interestingness': interest, 'views': (interest * rng.integers(5, 200, n)).astype(int)})


def _bcn_areas():
    "Barcelona's districts: ../shared/data/bcn, else the repo's fixtures, else the boundary cache."
    from geoloc.geojson import fetch_city, load_areas
    root = Path(__file__).resolve().parents[1]
    env = os.environ.get('GEOLOC_SHARED')
    for d in [Path(env) / 'data' / 'bcn' if env else None, root.parent / 'shared' / 'data' / 'bcn',
              Path('../shared/data/bcn'), Path('../../shared/data/bcn'), root / 'data' / 'fixtures' / 'bcn']:
        if d is not None and (d / 'districtes.geojson').exists(): return load_areas(d / 'districtes.geojson')
    return fetch_city('barcelona')


def barcelona_world(areas=None, # Barcelona's districts (default: ../shared/data/bcn, data/fixtures/bcn, or the cache)
                    *,
                    scale:float=1.0, # multiply every count (0.1 -> a tenth of the paper's sizes)
                    seed:int=0, # same seed, same world
                    **kwargs, # more `synthetic_world` options
                   ) -> World:
    "The paper's Barcelona: Figure 3's 182,130 Mapillary images and Figure 2's Flickr photos per district."
    if areas is None: areas = _bcn_areas()
    missing = sorted(set(BCN_MAPILLARY) - set(areas['name']))
    if missing:
        raise ValueError(f"barcelona_world: the areas lack the districts {missing}. Fix: pass Barcelona's "
                         "districtes.geojson (load_areas('../shared/data/bcn/districtes.geojson')) or areas=None.")
    kw = dict(mapillary_counts={k: int(round(v * scale)) for k, v in BCN_MAPILLARY.items()},
              flickr_counts={k: int(round(v * scale)) for k, v in BCN_FLICKR.items()},
              outside=0.2, flickr_outside=0.18, city='Barcelona', land=box(1.9, 41.2, 2.4, 41.6).difference(_BCN_SEA))
    kw.update(kwargs)
    return synthetic_world(areas, seed=seed, **kw)


# ------------------------------------------------------------------------------------------------ faults
@dataclass
class Faults:
    "Fault injection settings; every decision is a hash of (seed, request, attempt): same seed, same faults."
    latency:float=0.0 # seconds added to every response
    jitter:float=0.0 # up to this many more seconds, uniform
    p429:float=0.0 # probability of HTTP 429 with Retry-After
    retry_after:int=1 # the Retry-After header value (s)
    p5xx:float=0.0 # probability of HTTP 500/502/503/504
    p_drop:float=0.0 # probability of closing the connection without a response
    p_malformed:float=0.0 # JSON endpoints: probability of a truncated or non-JSON body (HTTP 200)
    p_truncated_jpeg:float=0.0 # images: probability of a truncated JPEG (HTTP 200, honest Content-Length)
    p_corrupt_jpeg:float=0.0 # images: probability of a body that is not a JPEG (HTTP 200, image/jpeg)
    p404_image:float=0.0 # images: probability that an image is gone (404, for good: decided per image, not per try)
    p_unavailable:float=0.0 # Flickr: `stat: fail` code 105 at HTTP 200; Mapillary: HTTP 500 Graph code 2
    dense_above:int=0 # Mapillary: bbox searches matching more images than this time out (HTTP 500, code 1); 0 = off
    seed:int=0 # fault seed

    def roll(self, kind: str, key: str, attempt: int) -> bool:
        "Whether the fault `kind` (a field name) hits this request."
        p = getattr(self, kind)
        return p > 0 and _u01(self.seed, kind, key, attempt) < p

    @classmethod
    def parse(cls, spec: str) -> 'Faults':
        "Faults from 'p429=0.1,p5xx=0.05,latency=0.01' (the CLI's form)."
        kw, names = {}, {f.name: f.type for f in dc_fields(cls)}
        for part in filter(None, (s.strip() for s in (spec or '').split(','))):
            k, _, v = part.partition('=')
            k = k.strip()
            if k not in names: raise ValueError(f'unknown fault {k!r} in {spec!r}. Fix: use {", ".join(names)}.')
            kw[k] = int(v) if names[k] in ('int', int) else float(v)
        return cls(**kw)


# ------------------------------------------------------------------------------------------------ HTTP plumbing
class _Resp:
    "An HTTP response to write (or a dropped connection when `drop`)."
    def __init__(self, status=200, body=b'', ctype='application/json; charset=utf-8', headers=None, drop=False):
        self.status, self.body, self.ctype, self.headers, self.drop = status, body, ctype, dict(headers or {}), drop

def _json(status, obj, headers=None) -> _Resp:
    return _Resp(status, json.dumps(obj, ensure_ascii=False, separators=(',', ':')).encode(), headers=headers)

def _graph_error(status, message, code, type_='MLYApiException', subcode=None, headers=None) -> _Resp:
    err = {'message': message, 'type': type_, 'code': code}
    if subcode is not None: err['error_subcode'] = subcode
    err['fbtrace_id'] = 'A' + hashlib.sha1(f'{message}{time.time_ns()}'.encode()).hexdigest()[:22]
    return _json(status, {'error': err}, headers)

def _text(status, text, ctype='text/plain; charset=utf-8', headers=None) -> _Resp:
    return _Resp(status, text.encode(), ctype, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'geoloc-emulator/1'
    timeout = 120  # idle keep-alive connections end after this
    disable_nagle_algorithm = True  # small responses must not wait for the client's delayed ACK (40 ms)
    def log_message(self, *args): pass
    def do_GET(self): self.server.app.handle(self, 'GET')
    def do_POST(self): self.server.app.handle(self, 'POST')
    def do_HEAD(self): self.server.app.handle(self, 'HEAD')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    def __init__(self, addr, app):
        super().__init__(addr, _Handler)
        self.app, self._conns, self._clock = app, set(), threading.Lock()
    def process_request(self, request, client_address):
        with self._clock: self._conns.add(request)
        super().process_request(request, client_address)
    def shutdown_request(self, request):
        with self._clock: self._conns.discard(request)
        super().shutdown_request(request)
    def close_connections(self):
        "End every open keep-alive connection (their threads then finish)."
        with self._clock: conns = list(self._conns)
        for c in conns:
            try: c.shutdown(socket.SHUT_RDWR)
            except OSError: pass


class _Service:
    "Shared request pipeline of both services: routing, faults, counters, log, writing."
    name = ''
    def __init__(self, emu: 'Emulator'): self.emu, self.world = emu, emu.world

    def handle(self, h: _Handler, method: str):
        t0 = time.perf_counter()
        url = urlsplit(h.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if method == 'POST':
            n = int(h.headers.get('Content-Length') or 0)
            params.update(parse_qsl(h.rfile.read(n).decode('utf-8', 'replace'), keep_blank_values=True))
        path = url.path
        if path.startswith('/_emulator/'): return self._write(h, self.emu._admin(path, params), method)
        endpoint, image = self.route(path, params)
        key = f'{self.name}:{path}?' + '&'.join(f'{k}={v}' for k, v in sorted(params.items())
                                               if k not in _SECRETS and k not in ('sig', 'exp'))
        emu, F = self.emu, self.emu.faults
        attempt = emu._attempt(key)
        delay = F.latency + (F.jitter * _u01(F.seed, 'jitter', key, attempt) if F.jitter else 0)
        if delay > 0: time.sleep(delay)
        fault = next((k for k in ('p_drop', 'p429', 'p5xx', 'p_unavailable') if F.roll(k, key, attempt)), None)
        if fault == 'p_drop': resp = _Resp(drop=True)
        elif fault == 'p429': resp = self.throttled()
        elif fault == 'p5xx': resp = self.server_error(_h64(F.seed, '5xx', key, attempt))
        elif fault == 'p_unavailable': resp = self.unavailable(params)
        else:
            try: resp = self.respond(endpoint, path, params, h, key, attempt)
            except Exception as e:  # a bug here must still answer like a server, and be visible in the log
                resp = self.server_error(0); resp.headers['X-Emulator-Error'] = f'{type(e).__name__}: {e}'[:200]
                emu._count('errors', 1)
            if resp.status == 200 and not resp.drop:
                if image: fault = self.image_fault(resp, key, attempt)
                elif F.roll('p_malformed', key, attempt):
                    fault = 'p_malformed'
                    b = resp.body
                    resp.body = b[:max(1, len(b) // 2)] if _u01(F.seed, 'mal', key, attempt) < 0.5 else \
                        b'<!DOCTYPE html><html><body><h1>Bad Gateway</h1></body></html>'
        # counted before the client can see the answer, so that stats() right after a response includes it
        emu._record(self.name, endpoint, path, params, 0 if resp.drop else resp.status,
                    (time.perf_counter() - t0) * 1000, 0 if resp.drop else len(resp.body), fault)
        if resp.drop: h.close_connection = True
        else: self._write(h, resp, method)

    def image_fault(self, resp, key, attempt):
        F = self.emu.faults
        if F.roll('p_truncated_jpeg', key, attempt):
            resp.body = resp.body[:max(64, len(resp.body) // 3)]
            return 'p_truncated_jpeg'
        if F.roll('p_corrupt_jpeg', key, attempt):
            b = bytearray(resp.body)
            b[:64] = hashlib.sha512(bytes(b[:64])).digest()  # no SOI marker, no JFIF header: not decodable
            resp.body = bytes(b)
            return 'p_corrupt_jpeg'
        return None

    def _write(self, h, resp: _Resp, method='GET'):
        try:
            h.send_response(resp.status)
            h.send_header('Content-Type', resp.ctype)
            h.send_header('Content-Length', str(len(resp.body)))
            for k, v in resp.headers.items(): h.send_header(k, str(v))
            h._headers_buffer.append(b'\r\n')
            if method != 'HEAD': h._headers_buffer.append(resp.body)  # headers and body in one write
            h.flush_headers()
        except (BrokenPipeError, ConnectionResetError): h.close_connection = True


class _Mapillary(_Service):
    name = 'mapillary'

    def route(self, path, params):
        if path.startswith('/cdn/'): return 'thumb', True
        if path.rstrip('/') in ('/images', '/v4/images'): return 'search', False
        return 'entity', False

    def throttled(self):
        ra = self.emu.faults.retry_after
        return _graph_error(429, 'Application request limit reached', 4, subcode=None, headers={'Retry-After': ra})

    def server_error(self, h):
        status = (500, 502, 503, 504)[h % 4]
        if status == 500: return _graph_error(500, 'An unknown error has occurred.', 1, type_='OAuthException')
        return _text(status, f'<html><body><h1>{status}</h1>Server error</body></html>', 'text/html; charset=utf-8')

    def unavailable(self, params):
        return _graph_error(500, 'Service temporarily unavailable', 2, type_='OAuthException')

    def respond(self, endpoint, path, params, h, key, attempt):
        if endpoint == 'thumb': return self.thumb(path, params)
        auth = h.headers.get('Authorization') or ''
        token = params.get('access_token')
        if auth:
            scheme, _, tok = auth.partition(' ')
            token = tok.strip() if scheme.lower() in ('oauth', 'bearer') else ''
        if token is None:
            return _graph_error(401, 'An access token is required to request this resource.', 104, 'OAuthException')
        if not hmac.compare_digest(token.encode(), self.emu.mapillary_token.encode()):
            return _graph_error(401, 'Invalid OAuth access token - Cannot parse access token', 190, 'OAuthException')
        fields = [f.strip() for f in (params.get('fields') or 'id').split(',') if f.strip()] or ['id']
        bad = [f for f in fields if f not in _MLY_FIELDS]
        if bad:
            return _graph_error(400, f'Tried accessing nonexisting field ({bad[0]}) on node type (Image)', 100)
        base = f"http://{h.headers.get('Host') or self.emu._hosts['mapillary']}"
        if endpoint == 'entity':
            iid = path.strip('/').split('/')[-1]
            try: r = self.world.row('mapillary', iid)
            except KeyError:
                return _graph_error(400, f"Unsupported get request. Object with ID '{iid}' does not exist, cannot be "
                                    "loaded due to missing permissions, or does not support this operation", 100,
                                    subcode=33)
            return _Resp(200, self.rows_json(np.array([r]), fields, base)[1:-1].encode())
        return self.search(params, fields, base)

    def search(self, params, fields, base):
        emu = self.emu
        if 'image_ids' in params and 'bbox' not in params:
            rows = []
            for i in params['image_ids'].split(','):
                try: rows.append(self.world.row('mapillary', i.strip()))
                except KeyError: pass
            return _Resp(200, ('{"data":' + self.rows_json(np.array(rows, np.int64), fields, base) + '}').encode())
        if 'bbox' not in params:
            return _graph_error(400, 'Invalid parameter: a bbox (minLon,minLat,maxLon,maxLat) or image_ids is '
                                'required', 100)
        try:
            x0, y0, x1, y1 = (float(v) for v in params['bbox'].split(','))
            ok = all(map(math.isfinite, (x0, y0, x1, y1)))
        except ValueError: ok = False
        if not ok or not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
            return _graph_error(400, f"Invalid parameter bbox={params['bbox']!r}: expected minLon,minLat,maxLon,"
                                "maxLat with min <= max", 100)
        area = (x1 - x0) * (y1 - y0)
        if area > emu.max_bbox_area * (1 + 1e-9):  # float noise of a box exactly at the limit is allowed
            return _graph_error(400, f'Invalid parameter bbox: area {area:.4g} square degrees is over the limit of '
                                f'{emu.max_bbox_area:g}', 100)
        lim = params.get('limit', '2000')
        try: limit = int(lim)
        except ValueError: limit = -1
        if limit < 1: return _graph_error(400, f'Invalid parameter limit={lim!r}: a positive integer', 100)
        limit = min(limit, 2000)  # the documented maximum (and default); more is capped, not refused
        idx = self.world._mly_search((x0, y0, x1, y1))
        m = self.world._mly_arrays()
        if 'start_captured_at' in params or 'end_captured_at' in params:
            try:
                t0 = _iso_ms(params.get('start_captured_at'), -2**62); t1 = _iso_ms(params.get('end_captured_at'), 2**62)
            except ValueError:
                return _graph_error(400, 'Invalid parameter start_captured_at/end_captured_at: ISO 8601 expected', 100)
            idx = idx[(m['captured_at'][idx] >= t0) & (m['captured_at'][idx] <= t1)]
        if 'is_pano' in params: idx = idx[m['is_pano'][idx] == (params['is_pano'].lower() == 'true')]
        if 'creator_username' in params: idx = idx[m['creator'][idx] == params['creator_username']]
        if emu.faults.dense_above and len(idx) > emu.faults.dense_above:
            return _graph_error(500, "Please reduce the amount of data you're asking for, then retry your request",
                                1, type_='OAuthException')
        rank = m['rank'][idx]
        if len(idx) > limit:
            top = np.argpartition(rank, limit - 1)[:limit]
            idx, rank = idx[top], rank[top]
        idx = idx[np.argsort(rank, kind='stable')]
        return _Resp(200, ('{"data":' + self.rows_json(idx, fields, base) + '}').encode())

    def rows(self, idx, fields, base) -> list:
        "The JSON objects of images `idx` with `fields` (the Graph projection)."
        return json.loads(self.rows_json(idx, fields, base))

    def rows_json(self, idx, fields, base) -> str:
        "The JSON array of images `idx` with `fields`, assembled from per-image fragments (fast for 2000 rows)."
        if len(idx) == 0: return '[]'
        acc = None
        for f in fields:
            if f in _MLY_THUMBS:
                exp = int((time.time() + self.emu.thumb_ttl) * 1000)
                size = _MLY_THUMBS[f]
                ids = self.world._mly_arrays()['id'][idx].tolist()
                v = np.array([f'"{f}":"{base}/cdn/mly/{i}/{size}.jpg?exp={exp}&sig={self.emu._sign(i, size, exp)}"'
                              for i in ids], dtype=object)
            else: v = self.world._mly_fragments(f)[idx]
            acc = v if acc is None else acc + ',' + v
        return '[{' + '},{'.join(acc.tolist()) + '}]'

    def thumb(self, path, params):
        parts = path.strip('/').split('/')  # cdn/mly/{id}/{size}.jpg
        if len(parts) != 4 or parts[1] != 'mly': return _text(404, 'Not Found')
        iid, size = parts[2], parts[3].removesuffix('.jpg')
        try: exp = int(params.get('exp', ''))
        except ValueError: exp = -1
        want = self.emu._sign(iid, size, exp)
        if exp < 0 or not hmac.compare_digest(want, params.get('sig', '')) or size not in _MLY_THUMBS.values():
            return _text(403, 'Bad signature')
        if time.time() * 1000 > exp: return _text(403, 'URL signature expired')
        try: self.world.row('mapillary', iid)
        except KeyError: return _text(404, 'Not Found')
        if self.emu._gone('mapillary', iid): return _text(404, 'Not Found')
        data = self.world.render('mapillary', iid, 'original' if size == 'original' else int(size))
        return _Resp(200, data, 'image/jpeg', {'Cache-Control': 'max-age=1209600'})


def _iso_ms(s, default) -> int:
    "ISO 8601 (or ms since epoch) -> ms since epoch."
    if s is None or s == '': return default
    if s.lstrip('-').isdigit(): return int(s)
    d = datetime.fromisoformat(s.replace('Z', '+00:00'))
    if d.tzinfo is None: d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp() * 1000)


_FLICKR_METHODS = ('flickr.photos.search', 'flickr.photos.getSizes', 'flickr.test.echo')
_SORTS = ('date-posted-desc', 'date-posted-asc', 'date-taken-desc', 'date-taken-asc', 'interestingness-desc',
          'interestingness-asc', 'relevance')


class _FlickrFail(Exception):
    def __init__(self, code, message): super().__init__(message); self.code, self.message = code, message


class _Flickr(_Service):
    name = 'flickr'

    def __init__(self, emu):
        super().__init__(emu)
        df = self.world.flickr
        self.a = dict(lon=df['lon'].to_numpy(float), lat=df['lat'].to_numpy(float), geo=df['lat'].notna().to_numpy(),
                      up=df['uploaded'].to_numpy(np.int64), taken=df['taken'].to_numpy(np.int64),
                      acc=df['accuracy'].to_numpy(int), ctx=df['geo_context'].to_numpy(int),
                      lic=df['license'].to_numpy(int), interest=df['interestingness'].to_numpy(float),
                      idn=df['id'].astype(np.int64).to_numpy(), owner=df['owner'].to_numpy(object))
        self.tags_pad = (' ' + df['tags'].map(_fold) + ' ').to_numpy(object)
        self.hay = (df['title'].map(_fold) + ' ' + df['tags'].map(_fold)).to_numpy(object)
        self._qcache, self._qlock = OrderedDict(), threading.Lock()

    def route(self, path, params):
        if path.startswith('/static/'): return 'static', True
        if path.rstrip('/') == '/services/rest':
            return {'flickr.photos.search': 'search', 'flickr.photos.getSizes': 'getSizes'}.get(
                params.get('method'), 'rest'), False
        return 'unknown', False

    def throttled(self):
        return _text(429, 'Too Many Requests', headers={'Retry-After': self.emu.faults.retry_after})

    def server_error(self, h):
        status = (500, 502, 503, 504)[h % 4]
        return _text(status, f'<html><body><h1>{status}</h1>Flickr is having a massage.</body></html>',
                     'text/html; charset=utf-8')

    def unavailable(self, params):
        return self.fail_resp(params, 105, 'Service currently unavailable')

    # -------------------------------------------------------------------------------------------- responses
    def fmt(self, params, obj, stat_ok=True) -> _Resp:
        "Serialise as Flickr does: JSON (JSONP unless nojsoncallback=1), or REST XML by default."
        f = params.get('format', 'rest')
        if f == 'json':
            body = json.dumps(obj, ensure_ascii=False, separators=(',', ':'))
            if params.get('nojsoncallback') != '1':
                body = f"{params.get('jsoncallback') or 'jsonFlickrApi'}({body})"
            return _Resp(200, body.encode(), 'application/json; charset=utf-8')
        return _Resp(200, _to_xml(obj).encode(), 'text/xml; charset=utf-8')

    def fail_resp(self, params, code, message) -> _Resp:
        return self.fmt(params, {'stat': 'fail', 'code': code, 'message': message})

    def respond(self, endpoint, path, params, h, key, attempt):
        if endpoint == 'static': return self.static(path)
        if endpoint == 'unknown': return _text(404, 'Not Found', 'text/html; charset=utf-8')
        f = params.get('format', 'rest')
        if f not in ('json', 'rest'):
            return self.fmt({'format': 'rest'}, {'stat': 'fail', 'code': 111, 'message': f'Format "{f}" not found'})
        key_ = params.get('api_key', '')
        if not key_ or not all(c in '0123456789abcdef' for c in key_.lower()) or len(key_) != 32:
            return self.fail_resp(params, 100, 'Invalid API Key (Key has invalid format)')
        if not hmac.compare_digest(key_.encode(), self.emu.flickr_key.encode()):
            return self.fail_resp(params, 100, 'Invalid API Key (Key not found)')
        method = params.get('method', '')
        if method not in _FLICKR_METHODS: return self.fail_resp(params, 112, f'Method "{method}" not found')
        try:
            if method == 'flickr.test.echo':
                return self.fmt(params, {**{k: {'_content': v} for k, v in params.items() if k not in _SECRETS},
                                         'stat': 'ok'})
            if method == 'flickr.photos.getSizes': return self.fmt(params, self.get_sizes(params, h))
            return self.fmt(params, self.search(params, h, key, attempt))
        except _FlickrFail as e:
            return self.fail_resp(params, e.code, e.message)

    def base(self, h): return f"http://{h.headers.get('Host') or self.emu._hosts['flickr']}"

    def static(self, path):
        parts = path.strip('/').split('/')  # static/{server}/{id}_{secret}[_{suffix}].jpg
        if len(parts) != 3 or not parts[2].endswith('.jpg'): return _text(404, 'Not Found')
        name = parts[2][:-4].split('_')
        if len(name) not in (2, 3): return _text(404, 'Not Found')
        iid, secret, suffix = name[0], name[1], ('_' + name[2]) if len(name) == 3 else ''
        if suffix not in _SUFFIX_SIZE: return _text(404, 'Not Found')
        try: r = self.world.row('flickr', iid)
        except KeyError: return _text(404, 'Not Found')
        df = self.world.flickr
        want = df['o_secret'].iat[r] if suffix == '_o' else df['secret'].iat[r]
        if secret != want or parts[1] != df['server'].iat[r] or (suffix == '_o' and not df['can_download'].iat[r]):
            return _text(404, 'Not Found')
        if self.emu._gone('flickr', iid): return _text(404, 'Not Found')
        size = _SUFFIX_SIZE[suffix]
        data = self.world.render('flickr', iid, 'original' if size is None else size)
        return _Resp(200, data, 'image/jpeg', {'Cache-Control': 'max-age=31536000'})

    def url(self, base, r, extra):
        df = self.world.flickr
        suffix, size = FLICKR_SIZES[extra]
        secret = df['o_secret'].iat[r] if suffix == '_o' else df['secret'].iat[r]
        return f"{base}/static/{df['server'].iat[r]}/{df['id'].iat[r]}_{secret}{suffix}.jpg"

    def get_sizes(self, params, h):
        try: r = self.world.row('flickr', params.get('photo_id', ''))
        except KeyError: raise _FlickrFail(1, 'Photo not found') from None
        base, iid, out = self.base(h), params.get('photo_id'), []
        for extra, (suffix, size) in FLICKR_SIZES.items():
            if suffix == '_o' and not self.world.flickr['can_download'].iat[r]: continue
            w, hh = self.world.image_size('flickr', iid, 'original' if size is None else size)
            out.append({'label': extra[4:], 'width': w, 'height': hh, 'source': self.url(base, r, extra),
                        'media': 'photo'})
        return {'sizes': {'canblog': 0, 'canprint': 0, 'candownload': 1, 'size': out}, 'stat': 'ok'}

    def query(self, params) -> tuple[np.ndarray, bool]:
        "Rows matching a search, in the requested order; and whether it is a geo query (250 per page)."
        a, now = self.a, self.world.now
        text = params.get('text', '').strip()
        tags = [t for t in (_fold(_clean_tag(t)) for t in params.get('tags', '').split(',')) if t]
        dates = {k: params.get(k, '').strip() for k in ('min_upload_date', 'max_upload_date', 'min_taken_date',
                                                        'max_taken_date')}
        user = params.get('user_id', '').strip()
        geo_q = bool(params.get('bbox')) or params.get('has_geo') in ('1', 'true') or bool(params.get('lat'))
        limiting = bool(text or tags or user or any(dates.values()))
        if not (limiting or geo_q):
            raise _FlickrFail(3, 'Parameterless searches have been disabled. Please use flickr.photos.getRecent '
                                 'instead.')
        m = np.ones(len(a['up']), bool)
        if params.get('bbox'):
            try:
                x0, y0, x1, y1 = (float(v) for v in params['bbox'].split(','))
                ok = all(map(math.isfinite, (x0, y0, x1, y1))) and x0 < x1 and y0 < y1
            except ValueError: ok = False
            if not ok or not (-180 <= x0 and x1 <= 180 and -90 <= y0 and y1 <= 90):
                raise _FlickrFail(18, 'Illogical arguments')
            with np.errstate(invalid='ignore'):
                m &= a['geo'] & (a['lon'] >= x0) & (a['lon'] <= x1) & (a['lat'] >= y0) & (a['lat'] <= y1)
        if params.get('lat') or params.get('lon'):
            try:
                la, lo_ = float(params['lat']), float(params['lon'])
                rad = float(params.get('radius') or 5) * (1.609344 if params.get('radius_units') == 'mi' else 1)
            except (KeyError, ValueError): raise _FlickrFail(18, 'Illogical arguments') from None
            if not (-90 <= la <= 90 and -180 <= lo_ <= 180) or rad <= 0: raise _FlickrFail(18, 'Illogical arguments')
            rad = min(rad, 32.0)  # Flickr's maximum radius, km
            with np.errstate(invalid='ignore'):
                dkm = np.hypot((a['lon'] - lo_) * 111.32 * math.cos(math.radians(la)), (a['lat'] - la) * 110.54)
                m &= a['geo'] & (dkm <= rad)
        if params.get('has_geo') in ('1', 'true'): m &= a['geo']
        elif params.get('has_geo') in ('0', 'false'): m &= ~a['geo']
        lo = {}
        for k, v in dates.items():
            if not v: continue
            try: lo[k] = int(float(v)) if v.replace('.', '').isdigit() else \
                int(datetime.fromisoformat(v).replace(tzinfo=timezone.utc).timestamp())
            except ValueError: raise _FlickrFail(18, 'Illogical arguments') from None
        if 'min_upload_date' in lo: m &= a['up'] >= lo['min_upload_date']
        if 'max_upload_date' in lo: m &= a['up'] <= lo['max_upload_date']
        if 'min_taken_date' in lo: m &= a['taken'] >= lo['min_taken_date']
        if 'max_taken_date' in lo: m &= a['taken'] <= lo['max_taken_date']
        if lo.get('min_upload_date', -1) > lo.get('max_upload_date', 2**62) or \
           lo.get('min_taken_date', -1) > lo.get('max_taken_date', 2**62):
            raise _FlickrFail(18, 'Illogical arguments')
        if geo_q and not limiting: m &= a['up'] >= now - 12 * 3600  # no limiting agent: only the last 12 hours
        if params.get('geo_context') in ('0', '1', '2'): m &= a['ctx'] == int(params['geo_context'])
        acc = params.get('accuracy', '')
        if acc.isdigit() and 1 <= int(acc) <= 16: m &= a['acc'] >= int(acc)
        if params.get('license', '').strip():
            try: lic = [int(v) for v in params['license'].split(',') if v.strip()]
            except ValueError: raise _FlickrFail(18, 'Illogical arguments') from None
            m &= np.isin(a['lic'], lic)
        if user: m &= a['owner'] == user
        idx = np.flatnonzero(m)
        if tags:
            pad = self.tags_pad[idx]
            hits = np.array([[f' {t} ' in s for s in pad] for t in tags]).reshape(len(tags), len(idx))
            idx = idx[hits.all(0) if params.get('tag_mode') == 'all' else hits.any(0)]
        score = None
        if text:
            words = _fold(text).split()
            hay = self.hay[idx]
            hit = np.array([[w in s for s in hay] for w in words]).reshape(len(words), len(idx))
            idx, score = idx[hit.all(0)], hit.sum(0)[hit.all(0)]
        sort = params.get('sort', 'date-posted-desc')
        if sort not in _SORTS: sort = 'date-posted-desc'
        if sort == 'relevance':
            keyv = -(a['interest'][idx] * (1 + (score if score is not None else 0)))
        else:
            col = {'date-posted': a['up'], 'date-taken': a['taken'], 'interestingness': a['interest']}[sort.rsplit('-', 1)[0]]
            keyv = col[idx] * (-1 if sort.endswith('desc') else 1)
        order = np.lexsort((-a['idn'][idx], keyv))
        return idx[order], geo_q

    def search(self, params, h, key, attempt):
        qkey = tuple(sorted((k, v) for k, v in params.items()
                            if k not in _SECRETS + ('page', 'per_page', 'extras', 'format', 'nojsoncallback',
                                                    'jsoncallback', 'method')))
        with self._qlock: hit = self._qcache.get(qkey)
        if hit is None:
            hit = self.query(params)
            with self._qlock:
                self._qcache[qkey] = hit
                while len(self._qcache) > 512: self._qcache.popitem(last=False)
        idx, geo_q = hit
        try: per_page = int(params.get('per_page', 100))
        except ValueError: per_page = 100
        per_page = max(1, min(per_page if per_page > 0 else 100, 250 if geo_q else 500))
        try: page = max(1, int(params.get('page', 1)))
        except ValueError: page = 1
        total = len(idx)
        reach = min(total, 4000)  # only the first 4000 results are reachable; later pages repeat earlier ones
        start = (page - 1) * per_page
        n = max(0, min(per_page, total - start))
        rows = idx[(start + np.arange(n)) % reach] if n else idx[:0]
        s = _u01(self.emu.seed, 'strings', key, attempt) < 0.5  # numbers as strings, decided per response
        num = (lambda v: str(v)) if s else (lambda v: v)
        extras = {e.strip() for e in params.get('extras', '').split(',') if e.strip()}
        photos = [self.photo(r, extras, num, self.base(h)) for r in rows.tolist()]
        return {'photos': {'page': num(page), 'pages': num(max(1, math.ceil(total / per_page)) if total else 0),
                           'perpage': num(per_page), 'total': num(total), 'photo': photos}, 'stat': 'ok'}

    def photo(self, r, extras, num, base) -> dict:
        df = self.world.flickr
        p = {'id': df['id'].iat[r], 'owner': df['owner'].iat[r], 'secret': df['secret'].iat[r],
             'server': df['server'].iat[r], 'farm': int(df['farm'].iat[r]), 'title': df['title'].iat[r],
             'ispublic': 1, 'isfriend': 0, 'isfamily': 0}
        if 'license' in extras: p['license'] = str(int(df['license'].iat[r]))
        if 'date_upload' in extras: p['dateupload'] = str(int(df['uploaded'].iat[r]))
        if 'date_taken' in extras:
            p['datetaken'] = datetime.fromtimestamp(int(df['taken'].iat[r]), timezone.utc).strftime('%Y-%m-%d %H:%M:%S')
            p['datetakengranularity'] = 0
            p['datetakenunknown'] = str(int(df['taken_unknown'].iat[r]))
        if 'owner_name' in extras: p['ownername'] = df['owner_name'].iat[r]
        if 'tags' in extras: p['tags'] = df['tags'].iat[r]
        if 'views' in extras: p['views'] = str(int(df['views'].iat[r]))
        if 'geo' in extras:
            lat, lon = df['lat'].iat[r], df['lon'].iat[r]
            if np.isnan(lat): p.update(latitude=0, longitude=0, accuracy=0, context=0)
            else: p.update(latitude=num(round(float(lat), 6)), longitude=num(round(float(lon), 6)),
                           accuracy=str(int(df['accuracy'].iat[r])), context=num(int(df['geo_context'].iat[r])),
                           geo_is_public=1)
        if 'o_dims' in extras or 'url_o' in extras:
            p['o_width'], p['o_height'] = num(int(df['o_width'].iat[r])), num(int(df['o_height'].iat[r]))
        for e in extras:
            if e in FLICKR_SIZES:
                suffix, size = FLICKR_SIZES[e]
                if suffix == '_o' and not df['can_download'].iat[r]: continue
                w, hh = self.world.image_size('flickr', df['id'].iat[r], 'original' if size is None else size)
                s = e[4:]
                p[e], p[f'height_{s}'], p[f'width_{s}'] = self.url(base, r, e), num(hh), num(w)
        return p


def _to_xml(obj) -> str:
    "Flickr's REST XML for the few response shapes the emulator makes."
    if obj.get('stat') == 'fail':
        return (f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="fail">\n\t<err code={quoteattr(str(obj["code"]))} '
                f'msg={quoteattr(obj["message"])} />\n</rsp>\n')
    (name, body), = [(k, v) for k, v in obj.items() if k != 'stat']
    def attrs(d): return ' '.join(f'{k}={quoteattr(str(v))}' for k, v in d.items() if not isinstance(v, (list, dict)))
    kids = ''.join(f'\n\t\t<{k[:-1] if k.endswith("s") and k != "sizes" else k} {attrs(c)} />'
                   for k, v in (body.items() if isinstance(body, dict) else []) if isinstance(v, list) for c in v)
    inner = f'<{name} {attrs(body)}>{kids}\n\t</{name}>' if isinstance(body, dict) else f'<{name}>{body}</{name}>'
    return f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="ok">\n\t{inner}\n</rsp>\n'


# ------------------------------------------------------------------------------------------------ the emulator
class Emulator:
    "Mapillary Graph v4 and Flickr REST stand-ins on 127.0.0.1 over a `World`; a context manager."
    def __init__(self, world:World, # what to serve
                 *,
                 faults:Faults=None, # fault injection (default: none)
                 mapillary_token:str=MAPILLARY_TOKEN, # the only token the Graph API accepts
                 flickr_key:str=FLICKR_KEY, # the only API key Flickr accepts (32 hex characters)
                 thumb_ttl:float=3600, # seconds a signed thumbnail URL stays valid
                 max_bbox_area:float=0.01, # largest bbox search, square degrees
                 seed:int=0, # server secret and per-response choices
                 process:bool=False, # serve from a child process (benchmarks: no shared GIL)
                 host:str='127.0.0.1', # interface to bind
                 mapillary_port:int=0, # 0: any free port
                 flickr_port:int=0, # 0: any free port
                 log_size:int=100_000, # request log entries kept
                ):
        self.world, self.faults = world, faults or Faults()
        self.mapillary_token, self.flickr_key = mapillary_token, flickr_key
        self.thumb_ttl, self.max_bbox_area, self.seed, self.process = thumb_ttl, max_bbox_area, seed, process
        self.host, self._ports = host, (mapillary_port, flickr_port)
        self._secret = hashlib.sha256(f'geoloc-emulator|{seed}|{os.getpid()}|{time.time_ns()}'.encode()).digest()
        self._lock = threading.Lock()
        self._attempts, self._stats = Counter(), Counter()
        self._log = deque(maxlen=log_size)
        self._servers, self._threads, self._proc = [], [], None
        self._hosts = {}
        self.mapillary_url = self.flickr_url = None

    def __repr__(self):
        state = f'mapillary {self.mapillary_url}, flickr {self.flickr_url}' if self.mapillary_url else 'stopped'
        return f'Emulator({state}; {self.world!r}; faults={self.faults})'

    def __getstate__(self): raise TypeError('an Emulator is not picklable (it holds servers)')

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> 'Emulator':
        "Start both servers (threads, or a child process when `process=True`)."
        if self.mapillary_url: return self
        if self.process: return self._start_process()
        self.world._mly_arrays()  # build the index and the common JSON fragments before the first request
        for f in ('id', 'computed_geometry', 'captured_at', 'sequence'): self.world._mly_fragments(f)
        for name, cls, port in (('mapillary', _Mapillary, self._ports[0]), ('flickr', _Flickr, self._ports[1])):
            srv = _Server((self.host, port), None)
            srv.app = cls(self)
            t = threading.Thread(target=srv.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True,
                                 name=f'emulator-{name}')
            t.start()
            self._servers.append(srv); self._threads.append(t)
            self._hosts[name] = f'{self.host}:{srv.server_address[1]}'
        self.mapillary_url = f"http://{self._hosts['mapillary']}"
        self.flickr_url = f"http://{self._hosts['flickr']}/services/rest"
        return self

    def _start_process(self):
        "Serve from a child Python process fed the pickled world on stdin (no main-module re-import, unlike spawn)."
        kw = dict(faults=asdict(self.faults), mapillary_token=self.mapillary_token, flickr_key=self.flickr_key,
                  thumb_ttl=self.thumb_ttl, max_bbox_area=self.max_bbox_area, seed=self.seed, host=self.host,
                  mapillary_port=self._ports[0], flickr_port=self._ports[1], log_size=self._log.maxlen)
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                          os.environ.get('PYTHONPATH')]))}
        self._proc = subprocess.Popen([sys.executable, '-c', 'from geoloc.emulator import _child_main; _child_main()'],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            pickle.dump((self.world, kw), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            msg = json.loads(line) if line else {'error': f'exited with code {self._proc.wait(30)}'}
        except (OSError, ValueError) as e: msg = {'error': f'{type(e).__name__}: {e}'}
        if 'error' in msg:
            self._proc.kill(); self._proc.wait(10); self._proc = None
            raise RuntimeError(f"the emulator child process failed to start: {msg['error']}")
        self._hosts = msg['hosts']
        self.mapillary_url = f"http://{self._hosts['mapillary']}"
        self.flickr_url = f"http://{self._hosts['flickr']}/services/rest"
        return self

    def close(self):
        "Stop the servers and end their connections."
        if self._proc is not None:
            try: self._proc.stdin.close()  # the child stops at end of input
            except OSError: pass
            try: self._proc.wait(10)
            except subprocess.TimeoutExpired: self._proc.kill(); self._proc.wait(5)
            self._proc.stdout.close()
            self._proc = None
        for s in self._servers:
            s.shutdown(); s.close_connections(); s.server_close()
        for t in self._threads: t.join(5)
        self._servers, self._threads = [], []
        self.mapillary_url = self.flickr_url = None

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.close()

    # -------------------------------------------------------------------------------------------- bookkeeping
    def _attempt(self, key) -> int:
        with self._lock:
            a = self._attempts[key]; self._attempts[key] += 1
        return a

    def _count(self, key, n=1):
        with self._lock: self._stats[key] += n

    def _record(self, service, endpoint, path, params, status, ms, nbytes, fault):
        red = {k: ('<redacted>' if k in _SECRETS else v) for k, v in params.items()}
        with self._lock:
            self._stats['requests'] += 1
            self._stats[f'requests.{service}.{endpoint}'] += 1
            self._stats[f'status.{service}.{endpoint}.{status or "dropped"}'] += 1
            self._stats['bytes'] += nbytes
            self._stats[f'bytes.{service}'] += nbytes
            if fault: self._stats[f'faults.{fault}'] += 1
            self._log.append({'t': time.time(), 'service': service, 'endpoint': endpoint, 'path': path,
                             'params': red, 'status': status, 'ms': round(ms, 3), 'bytes': nbytes, 'fault': fault})

    def stats(self) -> dict:
        "Counters: 'requests', 'requests.<service>.<endpoint>', 'status.<service>.<endpoint>.<code>', 'faults.<kind>', 'bytes'."
        if self._proc is not None: return self._admin_get('stats')
        with self._lock: return dict(sorted(self._stats.items()))

    @property
    def log(self) -> list:
        "The request log: dicts of t, service, endpoint, path, params (secrets redacted), status (0: dropped), ms, bytes, fault."
        return self.requests_log()

    def requests_log(self) -> list:
        "The request log as a list (from the child process too)."
        if self._proc is not None: return self._admin_get('log')
        with self._lock: return list(self._log)

    def reset(self):
        "Forget counters, log and attempt numbers (faults then repeat from the first attempt)."
        if self._proc is not None: return self._admin_get('reset')
        with self._lock: self._stats.clear(); self._attempts.clear(); self._log.clear()

    def _admin_get(self, what):
        with urllib.request.urlopen(f'{self.mapillary_url}/_emulator/{what}', timeout=30) as r: return json.loads(r.read())

    def _admin(self, path, params) -> _Resp:
        what = path.rsplit('/', 1)[-1]
        if what == 'stats': return _json(200, self.stats())
        if what == 'log': return _json(200, self.requests_log())
        if what == 'reset': self.reset(); return _json(200, {'ok': True})
        return _text(404, 'Not Found')

    def _sign(self, iid, size, exp) -> str:
        return hashlib.blake2b(f'{iid}|{size}|{exp}'.encode(), key=self._secret, digest_size=16).hexdigest()

    def _thumb_url(self, base, iid, size) -> str:
        exp = int((time.time() + self.thumb_ttl) * 1000)
        return f'{base}/cdn/mly/{iid}/{size}.jpg?exp={exp}&sig={self._sign(iid, size, exp)}'

    def _gone(self, source, iid) -> bool:
        "Whether the image was deleted (the 404 fault: decided per image, so retries do not help)."
        p = self.faults.p404_image
        return p > 0 and _u01(self.faults.seed, 'gone', source, iid) < p


def _child_main():
    "Child process: read (world, options) pickled on stdin, serve, print the hosts, stop at end of stdin."
    try:
        world, kw = pickle.load(sys.stdin.buffer)
        emu = Emulator(world, faults=Faults(**kw.pop('faults')), **kw).start()
        print(json.dumps({'hosts': emu._hosts}), flush=True)
    except Exception as e:
        print(json.dumps({'error': f'{type(e).__name__}: {e}'}), flush=True); return
    try: sys.stdin.buffer.read()
    except (OSError, KeyboardInterrupt): pass
    emu.close()


# ------------------------------------------------------------------------------------------------ CLI
def emulator_cli(city:str='synthetic', # 'synthetic' (a made-up city), 'barcelona' (the paper's sizes), or an areas file
                 port:int=8765, # Mapillary Graph port; Flickr listens on port+1 (0: any free ports)
                 host:str='127.0.0.1', # interface to bind
                 scale:float=1.0, # barcelona: multiply the paper's counts
                 mapillary:int=20_000, # synthetic/file: in-city Mapillary images
                 flickr:int=5_000, # synthetic/file: in-city Flickr photos
                 seed:int=0, # world seed
                 faults:str='', # e.g. 'p429=0.05,p5xx=0.02,latency=0.01' (see `Faults`)
                 thumb_ttl:float=3600, # seconds a thumbnail URL stays valid
                 duration:float=0, # stop after this many seconds (0: until Ctrl-C)
                ):
    "Serve the Mapillary and Flickr emulators over a synthetic world until interrupted."
    from geoloc.geojson import load_city
    t0 = time.perf_counter()
    if city.strip().lower() == 'barcelona': world = barcelona_world(scale=scale, seed=seed)
    else: world = synthetic_world(load_city(city, seed=seed), mapillary=mapillary, flickr=flickr, seed=seed)
    fl = Faults.parse(faults)
    emu = Emulator(world, faults=fl, thumb_ttl=thumb_ttl, host=host, mapillary_port=port,
                   flickr_port=port + 1 if port else 0)
    with emu:
        print(f'{world!r} built in {time.perf_counter() - t0:.1f} s', flush=True)
        print(f'mapillary_url {emu.mapillary_url}   (token {MAPILLARY_TOKEN})', flush=True)
        print(f'flickr_url {emu.flickr_url}   (api_key {FLICKR_KEY})', flush=True)
        print(f'faults {fl}', flush=True)
        try:
            end = time.time() + duration if duration else float('inf')
            while time.time() < end: time.sleep(min(0.2, max(0.0, end - time.time())))
        except KeyboardInterrupt: pass
        s = emu.stats()
    print(f"served {s.get('requests', 0)} requests, {s.get('bytes', 0):,} bytes", flush=True)
