"""Synthetic worlds over any city's areas: Mapillary sequences along street grids, Flickr photos clustered at hot
spots, each with real-looking metadata; and the paper's Barcelona at its published sizes.

Used by `Emulator`, the pipeline's emulated runs, `geoloc.sim.toy` and the tests; Barcelona's areas come from `geoloc.geojson.barcelona_file`."""
from __future__ import annotations

from datetime import datetime, timezone

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box

from ..geojson import barcelona_file, city_boundary, load_areas
from .world import BCN_FLICKR, BCN_MAPILLARY, BCN_SEA, WORLD_NOW, LocalMetres, World, clean_tag

__all__ = ['exact_counts', 'synthetic_world', 'barcelona_areas', 'barcelona_world', 'city_world']

# ------------------------------------------------------------------------------------------------ generation
def exact_counts(total: int, weights) -> np.ndarray:
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
    names = list(areas['name'])
    rng = np.random.default_rng(seed)
    cityg = city_boundary(areas)
    c = cityg.centroid
    P = LocalMetres(c.y, c.x)
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
        if given is None: return exact_counts(total, weights)
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
    clean = [clean_tag(nm) for nm in names]
    ctag = clean_tag(city)
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


def barcelona_areas() -> gpd.GeoDataFrame:
    "Barcelona's districts from the files at hand (`geoloc.geojson.barcelona_file`), else the boundary cache."
    from ..geojson import fetch_city
    p = barcelona_file('districts')
    return load_areas(p) if p is not None else fetch_city('barcelona')


def barcelona_world(areas=None, # Barcelona's districts (default: ../shared/data/bcn, data/fixtures/bcn, or the cache)
                    *,
                    scale:float=1.0, # multiply every count (0.1 -> a tenth of the paper's sizes)
                    seed:int=0, # same seed, same world
                    **kwargs, # more `synthetic_world` options
                   ) -> World:
    "The paper's Barcelona: Figure 3's 182,130 Mapillary images and Figure 2's Flickr photos per district."
    if areas is None: areas = barcelona_areas()
    missing = sorted(set(BCN_MAPILLARY) - set(areas['name']))
    if missing:
        raise ValueError(f"barcelona_world: the areas lack the districts {missing}. Fix: pass Barcelona's "
                         "districtes.geojson (load_areas('../shared/data/bcn/districtes.geojson')) or areas=None.")
    kw = dict(mapillary_counts={k: int(round(v * scale)) for k, v in BCN_MAPILLARY.items()},
              flickr_counts={k: int(round(v * scale)) for k, v in BCN_FLICKR.items()},
              outside=0.2, flickr_outside=0.18, city='Barcelona', land=box(1.9, 41.2, 2.4, 41.6).difference(BCN_SEA))
    kw.update(kwargs)
    return synthetic_world(areas, seed=seed, **kw)


def city_world(areas:gpd.GeoDataFrame, # the city's districts
               *,
               mapillary:int=2000, # Mapillary images inside the city
               flickr:int=500, # Flickr photos inside the city
               seed:int=0, # same seed, same world
              ) -> World:
    "A world for any city: Barcelona's districts get the paper's proportions (scaled), any other city its own."
    if set(BCN_MAPILLARY) <= set(areas['name']):
        return barcelona_world(areas, scale=mapillary / sum(BCN_MAPILLARY.values()), seed=seed,
                               flickr_counts={k: max(1, round(v * flickr / sum(BCN_FLICKR.values())))
                                              for k, v in BCN_FLICKR.items()})
    return synthetic_world(areas, mapillary=mapillary, flickr=flickr, seed=seed)
