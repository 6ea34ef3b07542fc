"""geoloc.labeling as a user drives it: labels against the paper's loop, bad rows, the CLI and its files."""
import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Point, shape

from geoloc.cli import main
from geoloc.geojson import load_areas
from geoloc.sim import synthetic_city
from geoloc.labeling import (LabelingError, build_dataset, district_counts, kfold, label_points, leakage_report,
                             load_dataset, split_dataset)

GEOLOC = [sys.executable, '-m', 'geoloc.cli']


def geoloc(*args, **kw):
    return subprocess.run([*GEOLOC, *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope='module')
def bcn(fixtures_dir):
    "Barcelona's districts and gran-barri units (the simplified fixtures: same names and order as the city's files)."
    return fixtures_dir / 'bcn'


def crawl(areas, n_seq=60, per_seq=30, flickr=400, seed=0):
    "Records in the crawlers' schema: straight Mapillary sequences (frames 4 m apart) and scattered Flickr photos."
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = areas.total_bounds
    sx, sy = rng.uniform(x0, x1, n_seq), rng.uniform(y0, y1, n_seq)
    ang = rng.uniform(0, 2 * np.pi, n_seq)
    k = np.tile(np.arange(per_seq), n_seq)
    seq = np.repeat(np.arange(n_seq), per_seq)
    lon = sx[seq] + k * 4 * np.cos(ang[seq]) / 83_000
    lat = sy[seq] + k * 4 * np.sin(ang[seq]) / 111_000
    mly = pd.DataFrame({'id': [f'{1000 + i}' for i in range(len(seq))], 'source': 'mapillary', 'lat': lat, 'lon': lon,
                        'sequence': [f'seq{s}' for s in seq]})
    fl = pd.DataFrame({'id': [f'f{i}' for i in range(flickr)], 'source': 'flickr',
                       'lat': rng.uniform(y0, y1, flickr), 'lon': rng.uniform(x0, x1, flickr), 'sequence': None})
    df = pd.concat([mly, fl], ignore_index=True)
    df['url'] = 'https://img.example.org/' + df.id + '.jpg'
    df['captured_at'] = pd.Timestamp('2020-01-01', tz='UTC') + pd.to_timedelta(np.arange(len(df)), unit='s')
    return df[['id', 'source', 'lat', 'lon', 'url', 'captured_at', 'sequence']]


def test_labels_match_the_papers_loop(bcn):
    "Vectorised labels equal the per-point loop over closed polygons (first in file order) on 1,500 random points."
    feats = json.loads((bcn / 'districtes.geojson').read_text())['features']
    areas = load_areas(bcn / 'districtes.geojson')
    rng = np.random.default_rng(1)
    x0, y0, x1, y1 = areas.total_bounds
    pts = pd.DataFrame({'latitude': rng.uniform(y0, y1, 1500), 'Longitude': rng.uniform(x0, x1, 1500)})
    got = label_points(pts, areas).district.fillna('outside')
    names = list(areas.name)
    want = []
    for la, lo in zip(pts.latitude, pts.Longitude):
        want.append(next((names[i] for i, f in enumerate(feats) if shape(f['geometry']).covers(Point(lo, la))), 'outside'))
    assert got.tolist() == want
    assert 0.3 < (got != 'outside').mean() < 0.9


def test_grid_labels_equal_the_exact_test(bcn):
    "Past 50,000 points a grid labels most of them; every label equals the per-point exact test, on borders too."
    from geoloc.labeling import _exact_xy, _label_xy
    for areas in (load_areas(bcn / 'districtes.geojson'), load_areas(bcn / 'gran-barri.geojson'), synthetic_city(12, seed=2)):
        geoms = np.array(areas.geometry.values, dtype=object)
        shapely.prepare(geoms)
        x0, y0, x1, y1 = areas.total_bounds
        rng = np.random.default_rng(7)
        v = shapely.get_coordinates(areas.boundary.values)  # every vertex, and the midpoint of every edge
        x = np.r_[rng.uniform(x0 - 0.01, x1 + 0.01, 200_000), v[:, 0], (v[:-1, 0] + v[1:, 0]) / 2, np.nan, x1]
        y = np.r_[rng.uniform(y0 - 0.01, y1 + 0.01, 200_000), v[:, 1], (v[:-1, 1] + v[1:, 1]) / 2, y0, y1]
        got, want = _label_xy(areas, x, y), _exact_xy(geoms, x, y)
        assert (got == want).all(), (got != want).sum()
        assert (want >= 0).mean() > 0.3


def test_points_on_borders_get_one_label_by_file_order():
    "Every vertex of a synthetic city's cells (shared borders, triple points) gets the first area that holds it."
    areas = synthetic_city(6, seed=4)
    xy = np.unique(shapely.get_coordinates(areas.boundary.values), axis=0)
    pts = pd.DataFrame({'lat': xy[:, 1], 'lon': xy[:, 0]})
    got = label_points(pts, areas).district
    first = [next(n for n, g in zip(areas.name, areas.geometry) if g.intersects(Point(x, y))) for x, y in xy]
    assert got.tolist() == first
    rev = label_points(pts, areas.iloc[::-1]).district
    assert (rev != got).any()  # shared-border points flip with the file order, deterministically


def test_bad_rows_are_counted_never_crash(bcn):
    areas = load_areas(bcn / 'districtes.geojson')
    df = crawl(areas).astype({'lat': object, 'lon': object})
    df.loc[0, 'lat'], df.loc[1, 'lon'], df.loc[2, 'lat'] = None, 'n/a', float('inf')
    df.loc[3, 'lat'], df.loc[4, 'lon'], df.loc[5, 'lat'] = -90.5, 181.0, '41.40N'
    with pytest.warns(UserWarning, match='unusable coordinates'):
        ds = build_dataset(df, areas)
    r = ds.attrs['report']
    assert (r['missing_coordinates'], r['non_numeric_coordinates'], r['infinite_coordinates'],
            r['out_of_range_coordinates']) == (1, 2, 1, 2)
    assert r['records'] == sum(v for k, v in r.items() if k not in ('records', 'kept')) + r['kept']
    assert ds.lat.dtype == float and ds.lon.dtype == float


def test_swapped_columns_stop_with_an_explanation(bcn):
    areas = load_areas(bcn / 'districtes.geojson')
    df = crawl(areas).rename(columns={'lat': 'lon', 'lon': 'lat'})
    with pytest.raises(LabelingError, match='look swapped'):
        build_dataset(df, areas)
    with pytest.raises(LabelingError, match='same city'):
        build_dataset(crawl(synthetic_city()), areas)


def test_grouped_splits_and_folds_never_cut_a_group(bcn):
    areas = load_areas(bcn / 'districtes.geojson')
    ds = build_dataset(crawl(areas, n_seq=200), areas)
    for how in ('sequence', 'spatial'):
        s = split_dataset(ds, how=how, valid_pct=0.2, seed=3)
        assert 0.12 < (s.split == 'valid').mean() < 0.28
        f = kfold(ds, 4, how=how, seed=3)
        assert sorted(f.fold.unique()) == [0, 1, 2, 3]
    s = split_dataset(ds, how='sequence', valid_pct=0.2)
    assert s.dropna(subset=['sequence']).groupby('sequence').split.nunique().max() == 1
    rep = leakage_report(s)
    assert rep.loc['as given', 'sequence_leak_pct'] == 0 and rep.loc['random', 'sequence_leak_pct'] > 50
    c = district_counts(split_dataset(ds, how='random'), areas=areas)
    assert c.images.sum() == len(ds) and (c.train + c.valid == c.images).all()


def test_label_and_split_cli(tmp_path, bcn, capsys):
    "GeoParquet and CSV records in, a dataset folder out; reruns give the same bytes; user errors are one line."
    areas = load_areas(bcn / 'districtes.geojson')
    recs = crawl(areas)
    mly, fl = recs[recs.source == 'mapillary'], recs[recs.source == 'flickr']
    (tmp_path / 'mly').mkdir()
    gpd.GeoDataFrame(mly, geometry=gpd.points_from_xy(mly.lon, mly.lat), crs=4326).to_parquet(tmp_path / 'mly' / 'records.parquet')
    fl.rename(columns={'lon': 'long'}).to_csv(tmp_path / 'flickr.csv', index=False)
    out = tmp_path / 'ds'
    args = ('label', f"{tmp_path / 'mly'},{tmp_path / 'flickr.csv'}", '--city', bcn / 'districtes.geojson',
            '--neighborhoods', bcn / 'gran-barri.geojson', '--out', out)
    r = geoloc(*args)
    assert r.returncode == 0, r.stderr
    assert 'kept' in r.stdout
    ds = load_dataset(out)
    assert {'district', 'neighborhood'} <= set(ds.columns) and 'geometry' not in ds.columns
    assert set(ds.source) == {'mapillary', 'flickr'}
    assert list(load_areas(out / 'areas.geojson').name) == list(areas.name)
    assert (out / 'neighborhoods.geojson').exists()
    first = (out / 'dataset.parquet').read_bytes()
    assert main([str(a) for a in args]) == 0   # the rerun in-process: the same dispatcher, without a second start-up
    assert (out / 'dataset.parquet').read_bytes() == first

    r = geoloc('split', '--dataset', out, '--how', 'spatial', '--block-m', 300)
    assert r.returncode == 0, r.stderr
    assert 'as given' in r.stdout
    assert set(load_dataset(out).split) == {'train', 'valid', 'buffer'}   # the spatial split leaves out what would leak
    split_once = (out / 'dataset.parquet').read_bytes()
    assert main(['split', '--dataset', str(out), '--how', 'spatial', '--block-m', '300']) == 0
    assert (out / 'dataset.parquet').read_bytes() == split_once

    # user errors: one line on stderr, exit status 1 (in-process: the same dispatcher, without a second start-up)
    assert main(['split', '--dataset', str(out), '--how', 'diagonal']) == 1
    assert main(['split', '--dataset', str(tmp_path / 'nowhere')]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'one of' in err[0] and 'geoloc label' in err[1]
