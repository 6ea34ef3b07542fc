"""geoloc.labeling as a user drives it: labels against the paper's loop, bad rows, the CLI and its files."""
import json
import os
import signal
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import urllib3
from PIL import Image
from shapely.geometry import Point, shape

from geoloc.cli import main
from geoloc.emulator import MAPILLARY_TOKEN, Emulator, Faults, synthetic_world
from geoloc.geojson import load_areas, synthetic_city
from geoloc.labeling import (LabelingError, build_dataset, district_counts, download_images, kfold, label_points,
                             leakage_report, load_dataset, save_dataset, split_dataset)

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
    assert geoloc(*args).returncode == 0
    assert (out / 'dataset.parquet').read_bytes() == first

    r = geoloc('split', '--dataset', out, '--how', 'spatial', '--block-m', 300)
    assert r.returncode == 0, r.stderr
    assert 'as given' in r.stdout
    assert set(load_dataset(out).split) == {'train', 'valid'}
    split_once = (out / 'dataset.parquet').read_bytes()
    assert geoloc('split', '--dataset', out, '--how', 'spatial', '--block-m', 300).returncode == 0
    assert (out / 'dataset.parquet').read_bytes() == split_once

    # user errors: one line on stderr, exit status 1 (in-process: the same dispatcher, without a second start-up)
    assert main(['split', '--dataset', str(out), '--how', 'diagonal']) == 1
    assert main(['split', '--dataset', str(tmp_path / 'nowhere')]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'one of' in err[0] and 'geoloc label' in err[1]


# ------------------------------------------------------------------------------------------------ downloads
def world_records(world, emu, batch=200):
    "Crawl-like records of an emulated world: Mapillary via the Graph API (signed thumb URLs), Flickr static URLs."
    rows, http = [], urllib3.PoolManager()
    ids = world.mapillary.id.tolist()
    for i in range(0, len(ids), batch):
        r = http.request('GET', f"{emu.mapillary_url}/images?image_ids={','.join(ids[i:i + batch])}"
                         '&fields=id,computed_geometry,captured_at,sequence,thumb_1024_url',
                         headers={'Authorization': f'OAuth {MAPILLARY_TOKEN}'})
        assert r.status == 200, r.data[:200]
        for d in json.loads(r.data)['data']:
            lon, lat = d['computed_geometry']['coordinates']
            rows.append({'id': d['id'], 'source': 'mapillary', 'lat': lat, 'lon': lon, 'url': d['thumb_1024_url'],
                         'captured_at': pd.Timestamp(d['captured_at'], unit='ms', tz='UTC'), 'sequence': d['sequence']})
    fl = world.flickr.dropna(subset=['lat'])
    base = emu.flickr_url.rsplit('/services', 1)[0]
    fl = pd.DataFrame({'id': fl.id, 'source': 'flickr', 'lat': fl.lat, 'lon': fl.lon,
                       'url': base + '/static/' + fl.server + '/' + fl.id + '_' + fl.secret + '_z.jpg',
                       'captured_at': pd.to_datetime(fl.taken, unit='s', utc=True), 'sequence': None})
    return pd.concat([pd.DataFrame(rows), fl], ignore_index=True)


def image_id_of(path):
    "The image id in an emulated image path: /cdn/mly/<id>/1024.jpg or /static/<server>/<id>_<secret>_z.jpg."
    return path.split('/')[3] if path.startswith('/cdn/') else path.rsplit('/', 1)[1].split('_')[0]


def image_requests(log):
    return [e for e in log if e['endpoint'] in ('thumb', 'static')]


@pytest.fixture(scope='module')
def world():
    return synthetic_world(synthetic_city(), mapillary=1000, flickr=300, seed=5)


def test_download_survives_faults_and_a_sigkill(tmp_path, world):
    """2% truncated JPEGs, 1% deleted images, 3% 5xx; the first run is killed with SIGKILL part-way, the rerun
    completes: every retrievable image is on disk and decodes, the rest are listed with their reason, and the
    rerun fetches nothing that was already on disk."""
    faults = Faults(latency=0.01, p_truncated_jpeg=0.02, p404_image=0.01, p5xx=0.03, seed=1)
    workers = 8
    with Emulator(world, faults=faults) as emu:
        ds = build_dataset(world_records(world, emu), world.areas)
        folder = tmp_path / 'ds'
        save_dataset(ds, folder, world.areas)
        n_crawl = len(emu.requests_log())
        env = {**os.environ, 'TEST_MLY_TOKEN': MAPILLARY_TOKEN}
        cmd = [*GEOLOC, 'download', '--dataset', str(folder), '--graph-url', emu.mapillary_url,
               '--token-env', 'TEST_MLY_TOKEN', '--workers', str(workers), '--quiet']
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        images = folder / 'images'
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline and len(list(images.glob('*/*.jpg'))) < 0.3 * len(ds):
            time.sleep(0.02)
        assert p.poll() is None, f'the first run ended before it could be killed: {p.communicate()}'
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        on_disk = {f.stem for f in images.glob('*/*.jpg')}
        assert 0 < len(on_disk) < len(ds)
        n_first = len(emu.requests_log())

        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        log = emu.requests_log()
        stats = emu.stats()

    out = load_dataset(folder)
    assert out.attrs['download']['present'] == len(on_disk)
    # the faults happened, and none of them left a trace on disk
    assert stats.get('faults.p_truncated_jpeg', 0) > 0 and stats.get('faults.p5xx', 0) > 0
    gone = {image_id_of(e['path']) for e in image_requests(log) if e['status'] == 404}
    assert gone and set(out.id[out.status == 'failed']) == gone
    assert (out.error[out.status == 'failed'] == 'HTTP 404').all()
    ok = out[out.status == 'ok']
    assert len(ok) == len(out) - len(gone)
    for path in ok.path:
        with Image.open(folder / path) as im:
            im.load()
            assert min(im.size) == 256
    assert not list(images.rglob('.*.part'))
    # nothing downloaded twice: the rerun asked for no image that was on disk, and over both runs at most the
    # images in flight at the kill were received whole twice
    rerun = {image_id_of(e['path']) for e in image_requests(log[n_first:])}
    assert not rerun & on_disk
    whole = pd.Series([image_id_of(e['path']) for e in image_requests(log[n_crawl:])
                       if e['status'] == 200 and e['fault'] is None]).value_counts()
    assert (whole > 1).sum() <= workers
    assert set(whole.index) == set(ok.id)


def test_expired_thumbnails_are_re_resolved_and_the_token_stays_secret(tmp_path, world):
    with Emulator(world, thumb_ttl=1) as emu:
        recs = world_records(world, emu)
        ds = pd.concat([recs[recs.source == 'mapillary'].head(40), recs[recs.source == 'flickr'].head(10)])
        time.sleep(1.2)  # every Mapillary URL has expired now
        n_mly = 40

        no_token = download_images(ds, tmp_path / 'a', graph_url=emu.mapillary_url, progress=False, backoff=0.01)
        assert (no_token.status[no_token.source == 'flickr'] == 'ok').all()
        assert no_token.error[no_token.source == 'mapillary'].str.contains('no token').all()

        wrong = download_images(ds, tmp_path / 'b', token='MLY|not-the-token', graph_url=emu.mapillary_url,
                                progress=False, backoff=0.01)
        errors = wrong.error[wrong.source == 'mapillary']
        assert errors.str.contains('rejected the token').all()
        assert not wrong.astype(str).apply(lambda c: c.str.contains('not-the-token')).any().any()

        emu.reset()
        folder = tmp_path / 'c'
        save_dataset(ds, folder)
        r = geoloc('download', '--dataset', folder, '--graph-url', emu.mapillary_url, '--token-env', 'TEST_MLY_TOKEN',
                   '--quiet', env={**os.environ, 'TEST_MLY_TOKEN': MAPILLARY_TOKEN})
        assert r.returncode == 0, r.stderr
        stats = emu.stats()
    out = load_dataset(folder)
    assert (out.status == 'ok').all()
    assert out.attrs['download']['re_resolved'] == n_mly
    assert stats['status.mapillary.entity.200'] == n_mly and stats['status.mapillary.thumb.403'] == n_mly
    secret = MAPILLARY_TOKEN.encode()
    assert secret not in (r.stdout + r.stderr).encode()
    assert not [f for f in folder.rglob('*') if f.is_file() and secret in f.read_bytes()]
