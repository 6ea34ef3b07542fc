"""The areas contract on real boundary files of cities on five continents (tests/fixtures/boundaries, from
codeforgermany/click_that_hood; see its README): EPSG:4326, exactly `name` + `geometry`, valid non-empty 2-D
polygons, clean unique names, the city boundary valid and equal to the union of the areas, a UTM round trip
within 1 m."""
import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely

from geoloc.geojson import city_boundary, load_areas, metric_crs, to_metres

FIX = Path(__file__).parent / 'fixtures' / 'boundaries'
CITIES = sorted(p.stem for p in FIX.glob('*.geojson'))
NAMES = {'seoul': 'adm_nm'}   # the files that keep their names in another property


def test_a_dozen_cities_on_five_continents():
    assert len(CITIES) >= 12
    readme = (FIX / 'README.md').read_text()
    for c in CITIES: assert f'`{c}.geojson`' in readme, c   # every fixture has its source noted
    for continent in ('Europe', 'North America', 'South America', 'Asia', 'Oceania', 'Africa'): assert continent in readme


@pytest.mark.parametrize('city', CITIES)
def test_the_areas_contract_holds_on_a_real_city(city):
    src = FIX / f'{city}.geojson'
    raw = json.loads(src.read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        a = load_areas(src, name=NAMES.get(city))
    assert a.crs.equals(pyproj.CRS.from_epsg(4326)) and list(a.columns) == ['name', 'geometry']
    assert a.geometry.is_valid.all() and not a.geometry.is_empty.any() and not a.geometry.has_z.any()
    assert set(a.geom_type) <= {'Polygon', 'MultiPolygon'}
    utm = metric_crs(a)
    area = a.to_crs(utm).area
    assert (area > 1.0).all(), a.name[area <= 1.0].tolist()
    names = a['name']
    assert names.is_unique and names.map(lambda s: isinstance(s, str) and s == ' '.join(s.split()) and s != '').all()
    # every feature's name survives (repeats dissolved into one area): nothing is lost silently
    given = {' '.join(str((f['properties'] or {}).get(NAMES.get(city, 'name'))).split()) for f in raw['features']}
    dropped = [str(w.message) for w in caught if 'dropped' in str(w.message)]
    assert set(names) <= given and (set(names) == given or dropped), given - set(names)
    # the city's boundary is valid and is the union of its areas (IoU > 0.98 in metres)
    b = city_boundary(a)
    assert b.is_valid and b.geom_type in ('Polygon', 'MultiPolygon')
    u = shapely.union_all(a.to_crs(utm).geometry.values)
    bm = gpd.GeoSeries([b], crs=4326).to_crs(utm).iloc[0]
    iou = shapely.intersection(u, bm).area / shapely.union(u, bm).area
    assert iou > 0.98, iou
    # a UTM round trip moves no vertex by more than 1 m
    xy = shapely.get_coordinates(a.geometry.values)
    back = shapely.get_coordinates(a.to_crs(utm).to_crs(4326).geometry.values)
    d = np.hypot(*(to_metres(xy[:, 1], xy[:, 0], utm) - to_metres(back[:, 1], back[:, 0], utm)).T)
    assert d.max() < 1.0
    # repairs are said, naming the features
    if (~np.array([shapely.from_geojson(json.dumps(f['geometry'])).is_valid for f in raw['features']])).any():
        assert any('repaired' in str(w.message) and "'" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ------------------------------------------------------------------------------------------------ the findings
# Each of these failed on the code before the redesign (commit 7f45c7d; see the closing note of issue 18).
def test_the_city_boundary_is_valid_where_the_reprojection_crosses_rings():
    "Wellington's suburbs: the union in UTM, back in degrees, used to come back with a ring self-intersection."
    a = load_areas(FIX / 'wellington.geojson')
    assert a.geometry.is_valid.all() and city_boundary(a).is_valid


def test_dropped_and_repaired_features_are_named_once():
    "Sydney: 10 invalid features; those left without area are dropped (named), the rest repaired (named), none twice."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        a = load_areas(FIX / 'sydney.geojson')
    msgs = [str(w.message) for w in caught]
    rep = next(m for m in msgs if 'repaired' in m)
    drop = next(m for m in msgs if 'dropped' in m)
    import re
    n_rep, n_drop = int(re.search(r'repaired (\d+)', rep)[1]), int(re.search(r'dropped (\d+)', drop)[1])
    raw = json.loads((FIX / 'sydney.geojson').read_text())['features']
    invalid = [f['properties']['name'] for f in raw if not shapely.from_geojson(json.dumps(f['geometry'])).is_valid]
    assert n_rep + n_drop == len(invalid) == 10 and len(a) == len(raw) - n_drop
    gone = set(n for n in (f['properties']['name'] for f in raw) if n not in set(a.name))
    for g in gone: assert repr(g) in drop and repr(g) not in rep, g   # dropped ones are named, and not as repaired
    assert "{'empty'" not in drop and 'zero-area polygon' in drop


def test_a_click_that_hood_slug_cannot_leave_the_cache(tmp_path):
    from geoloc.geojson import AreasError, fetch_city
    for bad in ('../../etc/passwd', 'a/b', '..', 'x\\..\\y', '.hidden'):
        with pytest.raises(AreasError, match='not a plain name'):
            fetch_city(f'click_that_hood:{bad}', cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_offline_barcelona_names_cache_seed_which_works_from_any_folder(tmp_path, monkeypatch, fixtures_dir):
    from geoloc.geojson import SourceUnavailable, cache_seed, fetch_city
    monkeypatch.setenv('GEOLOC_MIRROR', 'http://127.0.0.1:9')   # nothing listens: offline
    with pytest.raises(SourceUnavailable, match=r'geoloc cache-seed --city barcelona --src'):
        fetch_city('barcelona', cache_dir=tmp_path / 'cache')
    elsewhere = tmp_path / 'somewhere' / 'else'
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    import os
    rel = os.path.relpath(fixtures_dir / 'bcn', elsewhere)   # a relative --src, from outside the checkout
    assert cache_seed('barcelona', rel, cache_dir=tmp_path / 'cache')
    assert len(fetch_city('barcelona', cache_dir=tmp_path / 'cache')) == 10


def test_every_metric_computation_uses_one_utm_estimate():
    "No module works out UTM zones by hand (labeling used to); metres come from geojson.metric_crs / to_metres."
    root = Path(__file__).resolve().parents[1] / 'geoloc'
    for p in root.rglob('*.py'):
        text = p.read_text()
        for pattern in ('32600', '32700', '+ 180) // 6', 'zone = '):
            assert pattern not in text, f'{p}: {pattern}'
