"""Integration tests of geoloc.geojson: bad input, Barcelona's real layers, the download cache."""
import json
import warnings

import geopandas as gpd
import pytest
import shapely

from geoloc.geojson import (AreasError, SourceUnavailable, area_summary, cache_seed, city_boundary, fetch_city,
                            load_areas, synthetic_city)

SQUARE = [[[2.13, 41.40], [2.14, 41.40], [2.14, 41.41], [2.13, 41.41], [2.13, 41.40]]]


def fc(*features, **extra):
    return {'type': 'FeatureCollection', 'features': list(features), **extra}


def feat(props, gtype='Polygon', coords=SQUARE):
    return {'type': 'Feature', 'properties': props, 'geometry': {'type': gtype, 'coordinates': coords}}


# --- bad input: one test each, with a clear message naming the input and the fix ----------------------------

def test_missing_file(tmp_path):
    p = tmp_path / 'districts.geojson'
    with pytest.raises(FileNotFoundError, match='Area file not found') as e: load_areas(p)
    assert str(p) in str(e.value) and 'Fix' in str(e.value)


def test_not_json(tmp_path):
    p = tmp_path / 'districts.geojson'
    p.write_text('<html><body>502 Bad Gateway</body></html>')
    with pytest.raises(AreasError, match='not valid JSON') as e: load_areas(p)
    assert str(p) in str(e.value) and 'line 1, column 1' in str(e.value)


def test_empty_feature_collection(tmp_path):
    p = tmp_path / 'empty.geojson'
    p.write_text(json.dumps(fc()))
    with pytest.raises(AreasError, match='no features') as e: load_areas(p)
    assert str(p) in str(e.value)


def test_only_points():
    pts = fc(feat({'name': 'a'}, 'Point', [2.17, 41.40]), feat({'name': 'b'}, 'Point', [2.18, 41.41]))
    with pytest.raises(AreasError, match=r'no polygons \(found: Point\)'): load_areas(pts)


def test_points_among_polygons_are_dropped_with_a_warning():
    mixed = fc(feat({'name': 'a'}), feat({'name': 'b'}, 'Point', [2.17, 41.40]))
    with pytest.warns(UserWarning, match=r"dropped 1 feature\(s\) without area \('b': 1 Point"): areas = load_areas(mixed)
    assert list(areas.name) == ['a']


def test_no_usable_name_column():
    with pytest.raises(AreasError) as e: load_areas(fc(feat({'DISTRICTE': '01', 'AREA': 1.0})))
    msg = str(e.value)
    assert "['DISTRICTE', 'AREA']" in msg and "name='<column>'" in msg


def test_explicit_name_column():
    areas = load_areas(fc(feat({'DISTRICTE': '01'})), name='DISTRICTE')
    assert list(areas.name) == ['01']


def test_duplicate_names_are_dissolved():
    other = [[[2.14, 41.40], [2.15, 41.40], [2.15, 41.41], [2.14, 41.41], [2.14, 41.40]]]
    dup = fc(feat({'name': 'Gràcia'}), feat({'name': 'Eixample'}, coords=other),
             feat({'name': 'Gràcia '}, coords=[[[2.13, 41.41], [2.14, 41.41], [2.14, 41.42], [2.13, 41.42], [2.13, 41.41]]]))
    with pytest.warns(UserWarning, match='dissolved'): areas = load_areas(dup)
    assert list(areas.name) == ['Gràcia', 'Eixample']  # first-seen order kept
    assert areas.geometry.iloc[0].area == pytest.approx(2 * 0.01 * 0.01)


def test_self_intersecting_polygon_is_repaired():
    bowtie = [[[2.10, 41.40], [2.12, 41.42], [2.12, 41.40], [2.10, 41.42], [2.10, 41.40]]]
    with pytest.warns(UserWarning, match='repaired 1 invalid'): areas = load_areas(fc(feat({'NOM': 'x'}, coords=bowtie)))
    assert areas.is_valid.all() and areas.geom_type.iloc[0] == 'MultiPolygon'
    assert areas.geometry.iloc[0].area == pytest.approx(2 * 0.5 * 0.02 * 0.01)


def test_crlf_in_names():
    areas = load_areas(fc(feat({'NOM': 'la Vila de Gràcia\r\n\r\n'}), feat({'NOM': '  el   Coll\t'}, coords=[[[0, 0], [1, 0], [1, 1], [0, 0]]])))
    assert list(areas.name) == ['la Vila de Gràcia', 'el Coll']


def test_missing_names():
    with pytest.raises(AreasError, match='have no name'): load_areas(fc(feat({'name': None})))


def test_projected_crs_is_reprojected(tmp_path):
    g = gpd.GeoDataFrame({'name': ['box']}, geometry=[shapely.box(430000, 4580000, 431000, 4581000)], crs=25831)
    p = tmp_path / 'utm.geojson'
    g.to_file(p, driver='GeoJSON')
    areas = load_areas(p)
    assert areas.crs.to_epsg() == 4326
    assert areas.to_crs(25831).area.iloc[0] == pytest.approx(1e6, rel=1e-6)
    assert 2.0 < areas.geometry.iloc[0].centroid.x < 2.3 and 41.3 < areas.geometry.iloc[0].centroid.y < 41.5


def test_projected_coordinates_without_crs():
    utm = fc(feat({'name': 'x'}, coords=[[[430000, 4580000], [431000, 4580000], [431000, 4581000], [430000, 4580000]]]))
    with pytest.raises(AreasError, match='declares no CRS'): load_areas(utm)


def test_all_source_kinds_agree(tmp_path, serve_folder, fixtures_dir):
    path = fixtures_dir / 'bcn' / 'districtes.geojson'
    text = path.read_text()
    base = serve_folder(path.parent)
    results = [load_areas(path), load_areas(str(path)), load_areas(text), load_areas(json.loads(text)),
               load_areas(gpd.read_file(path)), load_areas(f'{base}/districtes.geojson')]
    for r in results:
        assert list(r.columns) == ['name', 'geometry'] and r.crs.to_epsg() == 4326
        assert list(r.name) == list(results[0].name)
        assert r.geom_equals_exact(results[0].geometry, tolerance=1e-9).all()


# --- Barcelona, full resolution (../shared) ------------------------------------------------------------------

def test_barcelona_layers(bcn_dir):
    d, gb, t = (load_areas(bcn_dir / f) for f in ('districtes.geojson', 'gran-barri.geojson', 'terme-municipal.geojson'))
    assert len(d) == 10 and len(gb) == 40 and len(t) == 1
    assert not gb.name.str.contains(r'[\r\n]').any() and (gb.name == gb.name.str.strip()).all()
    assert t.name.tolist() == ['Barcelona']
    assert area_summary(d, crs=25831).area_km2.sum() == pytest.approx(101.70, abs=0.01)


def test_barcelona_25831_roundtrip_within_1m(bcn_dir, tmp_path):
    for f in ('districtes.geojson', 'gran-barri.geojson'):
        a = load_areas(bcn_dir / f)
        p = tmp_path / f'25831-{f}'
        a.to_crs(25831).to_file(p, driver='GeoJSON')
        assert 'EPSG::25831' in p.read_text()[:500]
        b = load_areas(p)
        assert list(b.name) == list(a.name)
        assert b.to_crs(25831).geometry.hausdorff_distance(a.to_crs(25831).geometry).max() < 1.0


def test_city_boundary_matches_the_municipality(bcn_dir):
    city = city_boundary(load_areas(bcn_dir / 'gran-barri.geojson'))
    official = load_areas(bcn_dir / 'terme-municipal.geojson').geometry.iloc[0]
    assert city.is_valid
    assert city.intersection(official).area / city.union(official).area > 0.999


def test_city_boundary_closes_slivers():
    left = shapely.box(0, 0, 0.01, 0.01)
    right = shapely.box(0.0100001, 0, 0.02, 0.01)  # a ~1 cm gap between two districts
    areas = gpd.GeoDataFrame({'name': ['a', 'b']}, geometry=[left, right], crs=4326)
    assert areas.union_all().geom_type == 'MultiPolygon'
    assert city_boundary(areas).geom_type == 'Polygon'


# --- fetching with a cache, against a local server -------------------------------------------------------------

def test_fetch_city_downloads_once_then_works_offline(bcn_dir, serve_folder, tmp_path, monkeypatch):
    monkeypatch.setenv('GEOLOC_MIRROR', serve_folder(bcn_dir))
    d = fetch_city('barcelona', cache_dir=tmp_path)
    gb = fetch_city('Barcelona', 'gran-barri', cache_dir=tmp_path)
    assert len(d) == 10 and len(gb) == 40
    assert (tmp_path / 'barcelona' / 'districtes.geojson').read_bytes() == (bcn_dir / 'districtes.geojson').read_bytes()
    monkeypatch.setenv('GEOLOC_MIRROR', 'http://127.0.0.1:9')  # nothing listens there: offline
    assert list(fetch_city('barcelona', cache_dir=tmp_path).name) == list(d.name)
    with pytest.warns(UserWarning, match='using the cached copy'):
        assert len(fetch_city('barcelona', 'gran-barri', cache_dir=tmp_path, refresh=True)) == 40


def test_fetch_city_offline_with_empty_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('GEOLOC_MIRROR', 'http://127.0.0.1:9')
    with pytest.raises(SourceUnavailable) as e: fetch_city('barcelona', 'districts', cache_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / 'barcelona' / 'districtes.geojson') in msg
    assert 'districtes/districtes.geojson' in msg  # the real source URL to download by hand
    assert not (tmp_path / 'barcelona').exists() or not any((tmp_path / 'barcelona').iterdir())


def test_fetch_city_never_caches_a_broken_download(tmp_path, serve_folder, monkeypatch):
    site = tmp_path / 'site'; site.mkdir()
    (site / 'districtes.geojson').write_text('<html>rate limited</html>')
    monkeypatch.setenv('GEOLOC_MIRROR', serve_folder(site))
    with pytest.raises(AreasError, match='did not give usable areas'): fetch_city('barcelona', cache_dir=tmp_path / 'c')
    assert not (tmp_path / 'c' / 'barcelona' / 'districtes.geojson').exists()


def test_fetch_city_url_override_and_click_that_hood(tmp_path, serve_folder, fixtures_dir):
    base = serve_folder(fixtures_dir / 'bcn')
    a = fetch_city('click_that_hood:barcelona', cache_dir=tmp_path, url=f'{base}/districtes.geojson')
    assert len(a) == 10 and (tmp_path / 'click_that_hood-barcelona' / 'barcelona.geojson').exists()


def test_unknown_city_and_level():
    with pytest.raises(AreasError, match='Unknown city source'): fetch_city('atlantis')
    with pytest.raises(AreasError, match='no level'): fetch_city('barcelona', 'wards')


def test_cache_seed(tmp_path, fixtures_dir):
    written = cache_seed('barcelona', fixtures_dir / 'bcn', cache_dir=tmp_path)
    assert sorted(p.name for p in written) == ['districtes.geojson', 'gran-barri.geojson', 'terme-municipal.geojson']
    assert len(fetch_city('barcelona', 'boundary', cache_dir=tmp_path)) == 1


# --- the synthetic city ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('n,seed', [(1, 0), (3, 5), (10, 0), (40, 7)])
def test_synthetic_city(n, seed):
    a = synthetic_city(n, seed=seed)
    assert len(a) == n and a.name.is_unique and a.is_valid.all() and a.crs.to_epsg() == 4326
    assert a.equals(synthetic_city(n, seed=seed))
    # the cells tile the city: no overlaps, no gaps
    assert sum(a.to_crs(a.estimate_utm_crs()).area) == pytest.approx(
        gpd.GeoSeries([a.union_all()], crs=4326).to_crs(a.estimate_utm_crs()).area.iloc[0], rel=1e-6)


def test_synthetic_city_bad_args():
    with pytest.raises(ValueError): synthetic_city(0)
    with pytest.raises(ValueError, match='unique'): synthetic_city(2, names=['a', 'a'])
