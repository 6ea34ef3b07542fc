"""How the stand-ins' images look: district palettes, street-level frames seen from a moving car, Flickr-like
photos of landmarks and people, and the JPEG writer that gives them real photos' sizes and entropy at the cost of a byte copy.

Used by `geoloc.sim.world.World.render`; its JPEGs are what the downloader, trainer and benchmarks read."""
from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

__all__ = ['district_style', 'street_frame', 'flickr_photo', 'MosaicJPEG', 'jpeg_photo']

def district_style(rng, hue) -> dict:
    "Palette and structure of one district's streets (hue None: a muted outside-the-city look)."
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


def street_frame(style, srng, frame, aspect, frame_hash) -> np.ndarray:
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


def flickr_photo(style, prng, srng, aspect, indoor=False) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------------ realistic JPEGs
# A real 1024 px street photo is a 150-250 kB JPEG; a flat synthetic picture encodes to a tenth of that, which would
# flatter every benchmark of downloading and decoding. Encoding textured full-size images on request costs the server
# ~5 ms each, more than the client's own work. So the stand-ins write mosaics: a library of 16x16 px MCUs (every
# colour of a 12-level RGB cube, a few pink-noise textures each) is encoded once by libjpeg with a restart marker
# after every MCU, which makes each MCU's entropy-coded bytes self-contained; an image is then the library's header
# with its own size, and for each 16x16 cell of the picture the bytes of the MCU nearest its colour, joined by
# restart markers. Decoders do all the work a photo of that size and entropy asks of them.
class MosaicJPEG:
    "A library of self-contained JPEG MCUs, and `encode(rgb, w, h, seed)` that assembles w x h px pictures from it."
    LEVELS, VARIANTS = 12, 4

    def __init__(self, *, quality:int=85, texture:float=10.0, seed:int=0):
        rng = np.random.default_rng([seed, 4242])
        L, V = self.LEVELS, self.VARIANTS
        self.levels = (np.arange(L) + 0.5) * 256 / L
        cols = np.stack(np.meshgrid(self.levels, self.levels, self.levels, indexing='ij'), -1).reshape(-1, 3)
        n = len(cols) * V
        gw = 64; gh = -(-n // gw)
        tex = _pink_tiles(rng, V, 16) * texture                                        # (V, 16, 16) luminance
        k = np.arange(gw * gh)
        c, v = np.minimum(k // V, len(cols) - 1), k % V
        tiles = cols[c][:, None, None, :] + tex[v][..., None] * np.array([1.0, 0.9, 0.8], np.float32)  # (n, 16, 16, 3)
        img = tiles.reshape(gh, gw, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(gh * 16, gw * 16, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, 'JPEG', quality=quality, subsampling=2,
                                                                    restart_marker_blocks=1)
        data = buf.getvalue()
        sos = data.index(b'\xff\xda')
        head_end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], 'big')
        self.header, self._sof = data[:head_end], data.index(b'\xff\xc0')
        body = data[head_end:data.rindex(b'\xff\xd9')]
        segs, start, i = [], 0, 0
        while True:  # split at RSTn markers (0xFFD0-0xFFD7); stuffed 0xFF00 bytes stay inside their segment
            i = body.find(b'\xff', i)
            if i < 0: break
            if 0xD0 <= body[i + 1] <= 0xD7: segs.append(body[start:i]); start = i + 2
            i += 2
        segs.append(body[start:])
        self.segments = np.array(segs[:n], dtype=object)
        self.markers = np.array([bytes([0xFF, 0xD0 + j]) for j in range(8)], dtype=object)
        self.bytes_per_mcu = float(np.mean([len(s) for s in segs[:n]]))

    def _head(self, w, h) -> bytes:
        o = self._sof + 5  # SOF0: length(2) precision(1) height(2) width(2)
        return self.header[:o] + h.to_bytes(2, 'big') + w.to_bytes(2, 'big') + self.header[o + 4:]

    def encode(self, rgb:np.ndarray, # (H, W, 3) uint8: the picture at any resolution
               w:int, h:int, # the JPEG's size, px
               seed:int=0, # picks each cell's texture: same seed, same bytes
              ) -> bytes:
        "A baseline 4:2:0 JPEG of `rgb` scaled to w x h, built from library MCUs (16 x 16 px cells)."
        gw, gh = -(-w // 16), -(-h // 16)
        cells = np.asarray(Image.fromarray(rgb).resize((gw, gh), Image.BOX), np.float32)
        q = np.clip((cells * self.LEVELS / 256).astype(np.int64), 0, self.LEVELS - 1)
        colour = (q[..., 0] * self.LEVELS + q[..., 1]) * self.LEVELS + q[..., 2]
        variant = np.random.default_rng(seed).integers(0, self.VARIANTS, colour.shape)
        segs = self.segments[(colour * self.VARIANTS + variant).ravel()]
        parts = np.empty(2 * len(segs) - 1, dtype=object)
        parts[0::2], parts[1::2] = segs, self.markers[np.arange(len(segs) - 1) % 8]
        return self._head(w, h) + b''.join(parts.tolist()) + b'\xff\xd9'


def _pink_tiles(rng, n, size) -> np.ndarray:
    "`n` tiles of 1/f noise (unit standard deviation): the texture of surfaces in photos."
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fx, fy); f[0, 0] = 1
    spec = (rng.normal(size=(n, size, size // 2 + 1)) + 1j * rng.normal(size=(n, size, size // 2 + 1))) / f
    t = np.fft.irfft2(spec, s=(size, size))
    return ((t - t.mean((1, 2), keepdims=True)) / t.std((1, 2), keepdims=True)).astype(np.float32)


_CODECS = {}

def jpeg_photo(rgb:np.ndarray, w:int, h:int, seed:int=0, *, quality:int=85) -> bytes:
    "`rgb` as a w x h JPEG with a real photo's size and entropy (see `MosaicJPEG`); the library is built once."
    codec = _CODECS.get(quality)
    if codec is None: codec = _CODECS[quality] = MosaicJPEG(quality=quality)
    return codec.encode(rgb, w, h, seed)
