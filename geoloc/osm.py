"""OpenStreetMap's administrative boundaries of a place, through osmnx (an optional dependency: `geoloc-city[osm]`).

Hand-written (a thin layer over osmnx); `geoloc.geojson.fetch_city('osm:<place>', level)` calls `osm_areas` and caches
what it returns; tested in `tests/test_osm.py` against `geoloc.sim.osm`, a local stand-in of Nominatim and Overpass
serving recorded answers.

- `osm_areas(place, level)`: Nominatim geocodes the place to its boundary, Overpass gives every administrative
  boundary inside it, and the level is chosen: an admin_level number as given; 'districts' the coarsest level whose
  areas (two or more, inside the place) cover at least half of it; 'neighbourhoods' the next finer such level.
- Nominatim and Overpass may be moved with GEOLOC_NOMINATIM_URL and GEOLOC_OVERPASS_URL (a mirror or a stand-in);
  osmnx's own HTTP cache is not used (fetch_city caches the result); Overpass slots are waited for by reading its
  status page here, because osmnx's reader loops forever on servers without a rate limit.
"""
from __future__ import annotations

import os
import re
import time

import geopandas as gpd
import shapely

from .net import USER_AGENT, NetError, session

__all__ = ['OSMError', 'osm_areas', 'overpass_wait']


class OSMError(ValueError):
    "OpenStreetMap has no areas for the place or level asked; the message says what it has and what to ask instead."


def _utm(geom):
    return gpd.GeoSeries([geom], crs=4326).estimate_utm_crs()


def _choose_level(g: gpd.GeoDataFrame, place, level: str) -> tuple: # (admin_level, its areas)
    "Which admin_level gives the areas asked for (see the module's docstring); OSMError listing the levels found."
    utm = _utm(place)
    p = gpd.GeoSeries([place], crs=4326).to_crs(utm).iloc[0]
    m = g.to_crs(utm)
    inside = (m.geometry.intersection(p).area >= 0.5 * m.geometry.area) & (m.geometry.area < 0.95 * p.area)
    g = g[inside & g['name'].notna() & g['admin_level'].astype(str).str.isdigit()]
    found, cover = {}, {}
    for lvl, part in g.groupby(g['admin_level'].astype(int)):
        found[str(lvl)] = len(part)
        cover[str(lvl)] = shapely.union_all(m.loc[part.index].geometry.values).intersection(p).area / p.area
    tiling = [l for l in sorted(found, key=int) if found[l] >= 2 and cover[l] >= 0.5]
    want = level if level.isdigit() else (tiling[0] if level == 'districts' and tiling else
                                          tiling[1] if level == 'neighbourhoods' and len(tiling) > 1 else None)
    if want is None or want not in found:
        seen = ', '.join(f'admin_level {l}: {n} area(s), {cover[l]:.0%} of the place' for l, n in found.items()) or 'none'
        raise OSMError(f"OpenStreetMap has no {level if not level.isdigit() else 'admin_level ' + level} areas inside "
                       f"this place (found: {seen}). Fix: " + (f"level='{min(found, key=int)}' (an admin_level "
                       "number), or another place." if found else "a larger place (a city, not a neighbourhood)."))
    return want, g[g['admin_level'].astype(str) == want]


def overpass_wait(base: str, most_s: float = 120) -> float: # seconds waited
    """Wait for a free Overpass slot, reading `<base>/status` in every form public servers write it. osmnx's own reader
    takes the fifth line as the slot line, which a server without a rate limit ('Rate limit: 0', no slot line) or an
    older one (no 'Announced endpoint' line) never has: it then waits 5 s and asks again, forever."""
    try:
        with session(retries=1, deadline=30) as s: r = s.get(base.rstrip('/') + '/status')
        text = r.body.decode('utf-8', 'replace') if r.status == 200 else ''
    except NetError: return 0.0  # no status page: go on; Overpass answers 429 when it is busy
    if re.search(r'^Rate limit: 0\s*$', text, re.M) or re.search(r'^\d+ slots? available now', text, re.M): return 0.0
    waits = [int(m) for m in re.findall(r'^Slot available after: \S+, in (-?\d+) seconds', text, re.M)]
    pause = float(min(max(min(waits, default=1), 0), most_s))
    time.sleep(pause)
    return pause


def osm_areas(place: str, # a place Nominatim knows as a boundary: 'Paris, France'
              level: str = 'districts', # 'districts', 'neighbourhoods' or an admin_level number ('9')
             ) -> bytes: # GeoJSON (name, geometry) of the areas
    "The administrative areas of `place` at `level` from OpenStreetMap; OSMError / ConnectionError with the fix."
    try: import osmnx as ox
    except ImportError: raise OSMError("osm: sources need osmnx. Fix: pip install 'geoloc-city[osm]'.") from None
    keep = {k: getattr(ox.settings, k) for k in ('nominatim_url', 'overpass_url', 'use_cache', 'log_console',
                                                 'http_user_agent', 'requests_timeout', 'overpass_rate_limit')}
    ox.settings.use_cache, ox.settings.log_console, ox.settings.http_user_agent = False, False, USER_AGENT
    ox.settings.requests_timeout, ox.settings.overpass_rate_limit = 60, False  # slots: `overpass_wait`
    for var, key in (('GEOLOC_NOMINATIM_URL', 'nominatim_url'), ('GEOLOC_OVERPASS_URL', 'overpass_url')):
        if os.environ.get(var): setattr(ox.settings, key, os.environ[var])
    try:
        overpass_wait(ox.settings.overpass_url)
        try: where = ox.geocode_to_gdf(place)
        except (TypeError, ox._errors.InsufficientResponseError) as e:
            raise OSMError(f"OpenStreetMap's geocoder has no area for {place!r} ({e}). Fix: name the city as "
                           "'City, Region, Country' (a place that is a boundary, not a point).") from None
        try: g = ox.features_from_polygon(where.geometry.iloc[0], tags={'boundary': 'administrative'})
        except ox._errors.InsufficientResponseError: g = gpd.GeoDataFrame({'name': [], 'admin_level': []}, geometry=[], crs=4326)
    except OSMError: raise
    except Exception as e:
        raise ConnectionError(f"OpenStreetMap query for {place!r} failed: {type(e).__name__}: {e}") from None
    finally:
        for k, v in keep.items(): setattr(ox.settings, k, v)
    g = g[g.geom_type.isin(['Polygon', 'MultiPolygon'])].reset_index()
    for c in ('name', 'admin_level'):
        if c not in g: g[c] = None
    _, areas = _choose_level(g, where.geometry.iloc[0], str(level))
    return areas[['name', 'geometry']].to_json(drop_id=True, ensure_ascii=False).encode()
