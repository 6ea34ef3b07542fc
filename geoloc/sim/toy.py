"""Small dataset folders for training lessons, tests and benchmarks, in the labeling stage's layout
(`dataset.parquet`, `areas.geojson`, `images/`), written through `geoloc.labeling`'s own writer.

Used by the training, analysis and prediction lessons, their tests and the benchmarks."""
from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..labeling import image_path, save_dataset
from .city import synthetic_city
from .generate import synthetic_world

__all__ = ['stripes_image', 'toy_dataset']


def stripes_image(k:int, n:int, size:int, rng, wide:bool, noise:float) -> Image.Image:
    "An image of district `k` of `n`: its colour and stripe angle say the district; noise hides it a little."
    h, w = size, (size * 4 // 3 if wide else size)
    yy, xx = np.mgrid[0:h, 0:w] / size
    ang, freq = math.pi * k / n, 3 + k % 3
    stripes = np.sin(2 * math.pi * freq * (xx * math.cos(ang) + yy * math.sin(ang)) + rng.uniform(0, 2 * math.pi))
    base = np.array(colorsys.hsv_to_rgb((k / n + rng.normal(0, 0.03)) % 1, 0.55, 0.8)) * 255
    img = base * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _shrunk(jpeg:bytes, short:int) -> bytes:
    "A JPEG with short side `short`, made as `geoloc.images` makes training images (DCT draft, bilinear, q90)."
    im = Image.open(io.BytesIO(jpeg)); im.draft('RGB', (short, short))
    w, h = im.size
    im = im.convert('RGB').resize((round(w * short / min(w, h)), round(h * short / min(w, h))), Image.BILINEAR)
    buf = io.BytesIO(); im.save(buf, 'JPEG', quality=90)
    return buf.getvalue()


def toy_dataset(dest, # folder to write dataset.parquet, areas.geojson and images/ into
                *,
                n_classes:int=10, # districts
                per_class:int=30, # images per district (fewer where the emulated world has fewer)
                size:int=96, # short side of the images, px
                valid_pct:float=0.2, # share of each district in the validation split
                images:str='emulator', # 'emulator' (the stand-ins' street frames) or 'stripes' (an easy world)
                noise:float=40., # 'stripes': pixel noise (std, 0-255 scale)
                areas=None, # the districts (default: `synthetic_city(n_classes, seed=seed)`)
                counts:dict=None, # 'emulator': images per district name (default: `per_class` each)
                style_noise:float=0.25, # 'emulator': share of sequences painted in another district's palette
                flickr_per_class:int=0, # 'emulator': also this many Flickr photos per district (owner and date kept)
                seed:int=0,
               ) -> Path: # `dest`
    """A small dataset folder with district-dependent synthetic JPEGs. 'emulator' images of 200 px and more are
    rendered as 1024 px thumbnails of real photos' size and entropy and shrunk the way downloads are (a 256 px one
    is 20-35 kB, as real training images are); smaller ones are drawn directly at their size. With
    `flickr_per_class`, the folder holds both sources, as a pipeline's dataset does."""
    if images not in ('emulator', 'stripes'): raise ValueError(f"images must be 'emulator' or 'stripes', not {images!r}.")
    if flickr_per_class and images != 'emulator': raise ValueError("flickr_per_class needs images='emulator'.")
    dest = Path(dest)
    areas = synthetic_city(n_classes, seed=seed) if areas is None else areas
    n_classes = len(areas)
    rng = np.random.default_rng(seed)
    if images == 'emulator':
        want = {d: (counts or {}).get(d, per_class if counts is None else 0) for d in areas.name}
        fl = dict(flickr_counts={d: max(10, 3 * flickr_per_class) for d in areas.name}) if flickr_per_class else dict(flickr=0)
        world = synthetic_world(areas, mapillary_counts={d: max(20, 5 * k) for d, k in want.items()}, **fl,
                                seed=seed, style_noise=style_noise)
        recs = world.mapillary[world.mapillary.district.notna()].sample(frac=1, random_state=seed)
        recs = pd.concat([g.head(want[d]) for d, g in recs.groupby('district', sort=False)])
        recs = recs.set_index('district').loc[[d for d in areas.name if d in set(recs.district)]].reset_index()
        recs['captured_at'] = pd.to_datetime(recs.captured_at, unit='ms', utc=True)  # the API's ms since epoch
        recs['source'] = 'mapillary'
        if flickr_per_class:
            f = world.flickr[world.flickr.district.notna()].sample(frac=1, random_state=seed)
            f = pd.concat([g.head(flickr_per_class) for _, g in f.groupby('district', sort=False)])
            taken = pd.to_datetime(f.taken, unit='s', utc=True)
            f = f.assign(source='flickr', captured_at=taken, sequence=None, width=f.o_width, height=f.o_height,
                         taken_local=taken.dt.tz_localize(None).dt.strftime('%Y-%m-%d %H:%M:%S'))  # Flickr's datetaken
            recs = pd.concat([recs, f[['id', 'lat', 'lon', 'district', 'captured_at', 'sequence', 'width', 'height',
                                       'source', 'owner', 'taken_local']]], ignore_index=True)
    else:
        pts = areas.geometry.sample_points(per_class, rng=rng).explode(index_parts=False)
        t0 = pd.Timestamp('2020-01-01', tz='UTC')
        recs = pd.DataFrame([dict(id=f'{k:03d}{i:05d}', lat=pt.y, lon=pt.x, sequence=f'seq{k}-{i // 10}', district=name,
                                  captured_at=t0 + pd.Timedelta(minutes=k * per_class + i), source='mapillary')
                             for k, name in enumerate(areas.name) for i, pt in enumerate(pts.loc[k])])
    recs = recs.reset_index(drop=True)
    recs['split'] = 'train'
    for _, idx in recs.groupby(['source', 'district'], sort=False).groups.items():
        recs.loc[rng.choice(idx, max(1, round(len(idx) * valid_pct)), replace=False), 'split'] = 'valid'
    paths = [image_path(s, i) for s, i in zip(recs.source, recs.id.astype(str))]
    for r, path in zip(recs.itertuples(), paths):
        (dest/path).parent.mkdir(parents=True, exist_ok=True)
        if images == 'emulator':
            w, h = int(r.width), int(r.height)
            if size >= 200: data = _shrunk(world.render(r.source, r.id, 1024), size)
            else: data = world.render(r.source, r.id, round(size * max(w, h) / min(w, h)), realistic=False)
            (dest/path).write_bytes(data)
        else:
            k = list(areas.name).index(r.district)
            stripes_image(k, n_classes, size, rng, rng.random() < 0.25, noise).save(dest/path, quality=90)
    ds = pd.DataFrame({'id': recs.id.astype(str), 'source': recs.source, 'lat': recs.lat, 'lon': recs.lon,
                       'url': 'toy://' + recs.id.astype(str), 'captured_at': recs.captured_at,
                       'sequence': recs.sequence.astype(object).where(recs.sequence.notna(), None).map(
                           lambda v: None if v is None else str(v)),
                       'district': recs.district, 'split': recs.split, 'path': paths, 'status': 'ok'})
    if flickr_per_class: ds['owner'], ds['taken_local'] = recs.owner.to_numpy(object), recs.taken_local.to_numpy(object)
    save_dataset(ds, dest, areas)
    return dest
