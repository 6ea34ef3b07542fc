"""A synthetic city: named, irregular, Voronoi-style districts inside a wobbly outline, deterministic by seed, in the
shape `geoloc.geojson.load_areas` returns (`name`, `geometry`, EPSG:4326). For tests, demos and the stand-ins: it
exists everywhere, offline, and looks like a real city's district layer.

Used by `geoloc.geojson.load_city('synthetic')`, `geoloc.sim.generate` and the tests; imports nothing of geoloc."""
from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from shapely.geometry import MultiPoint, MultiPolygon, Polygon

__all__ = ['synthetic_city']

_PREFIXES = ['North', 'South', 'East', 'West', 'Old', 'New', 'Port', 'High', 'Green', 'Mill', 'Bridge', 'Castle',
             'River', 'Lake', 'Stone', 'Oak', 'Market', 'Church', 'Harbour', 'Hill', 'Elm', 'Fair', 'Kings', 'Salt']
_SUFFIXES = ['gate', 'field', 'side', 'wood', 'ford', 'bury', 'ton', 'dale', 'haven', 'moor', 'cross', 'well',
             'brook', 'view', 'park', 'marsh', 'stead', 'wick']


def _names(n, rng) -> list:
    combos = [p + s for p in _PREFIXES for s in _SUFFIXES]
    return [combos[i] for i in rng.choice(len(combos), size=n, replace=False)]


def _outline(rng, radius_m, points=256) -> Polygon:
    "An irregular closed outline around (0, 0), in metres."
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 10): r += rng.uniform(0.03, 0.22) / k**0.8 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[radius_m * r * np.cos(theta), radius_m * r * np.sin(theta)])


def _polygonal(g):
    "The polygonal part of `g` as a Polygon or MultiPolygon (None if it has none)."
    polys = [p for p in shapely.get_parts(g) if isinstance(p, Polygon) and not p.is_empty]
    if isinstance(g, (Polygon, MultiPolygon)) and g.is_valid: return g
    return None if not polys else polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _voronoi_cells(pts, outline) -> list:
    "Voronoi cells of `pts`, in their order, clipped to `outline`."
    if len(pts) == 1: return [outline]
    vor = shapely.voronoi_polygons(MultiPoint(pts), extend_to=outline.buffer(outline.length), ordered=True)
    return [_polygonal(shapely.make_valid(c.intersection(outline))) for c in vor.geoms]


def synthetic_city(n:int=10, # number of districts
                   *,
                   seed:int=0, # same seed, same city
                   center:tuple=(39.90, 1.20), # (lat, lon) of the centre, WGS84 degrees
                   radius_km:float=5.5, # mean radius; 5.5 km gives about Barcelona's 100 km2
                   names:list=None, # district names (default: made-up, unique)
                  ) -> gpd.GeoDataFrame: # like `load_areas`: name, geometry; EPSG:4326
    "A named, irregular, Voronoi-style city, deterministic by seed."
    if n < 1: raise ValueError(f"synthetic_city needs n >= 1 districts, got n={n}.")
    if names is not None and (len(names) != n or len(set(names)) != n):
        raise ValueError(f"synthetic_city: names must be {n} unique strings, got {len(names)} ({len(set(names))} unique).")
    rng = np.random.default_rng(seed)
    outline = _outline(rng, radius_km * 1000)
    x0, y0, x1, y1 = outline.bounds
    pts = []
    while len(pts) < n:
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if outline.contains(shapely.Point(x, y)): pts.append((x, y))
    pts = np.array(pts)
    for _ in range(2):  # Lloyd relaxation: move each seed to its cell's centroid
        cells = _voronoi_cells(pts, outline)
        pts = np.array([[c.centroid.x, c.centroid.y] for c in cells])
    cells = _voronoi_cells(pts, outline)
    cells = [cells[i] for i in np.lexsort((pts[:, 0], -np.round(pts[:, 1], -3)))]  # north-west first, as a map reads
    aeqd = pyproj.CRS.from_proj4(f'+proj=aeqd +lat_0={center[0]} +lon_0={center[1]} +datum=WGS84 +units=m')
    geoms = gpd.GeoSeries(cells, crs=aeqd).to_crs(4326)
    geoms = gpd.GeoSeries([_polygonal(shapely.make_valid(g)) for g in geoms], crs=4326)  # rounding can cross rings
    nm = list(names) if names is not None else _names(n, rng)
    return gpd.GeoDataFrame({'name': nm}, geometry=geoms.values, crs=4326)
