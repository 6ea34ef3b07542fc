"""geoloc.mapillary against geoloc.emulator on 127.0.0.1: completeness, faults, SIGKILL + resume, secrets, errors, CLI.

A small synthetic world (24,000 images, 20,000 inside the city) crawled with `limit=100` (instead of the API's 2000)
gives a few hundred searches and several levels of splitting in a few seconds.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geoloc.crawlio import ApiError, TokenRejected
from geoloc.sim import MAPILLARY_TOKEN, Emulator, Faults, World, synthetic_world
from geoloc.sim import synthetic_city
from geoloc.mapillary import (COLUMNS, as_area, clip_box, cover_boxes, crawl_boxes, crawl_images, images_frame,
                              kd_cells, mapillary_cli, parse_images, quadtree_requests, _time_split)

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 100


@pytest.fixture(scope='module')
def city(tmp_path_factory):
    "The areas, written to a file and read back (what every crawl and subprocess uses), and the world over them."
    path = tmp_path_factory.mktemp('city') / 'areas.geojson'
    synthetic_city(6, seed=3).to_file(path, driver='GeoJSON')
    areas = gpd.read_file(path)
    world = synthetic_world(areas, mapillary=20_000, flickr=100, seed=3)
    return path, areas, world


@pytest.fixture(scope='module')
def truth(city):
    "Ids of the images inside the area, from the world's coordinates."
    _, areas, world = city
    m = world.mapillary
    inside = shapely.intersects_xy(as_area(areas), m['lon'].to_numpy(), m['lat'].to_numpy())
    return set(m['id'][inside])


@pytest.fixture(scope='module')
def clean(city, tmp_path_factory):
    "A clean crawl (no faults) and the number of requests it took."
    _, areas, world = city
    out = tmp_path_factory.mktemp('clean')
    with Emulator(world) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=out, limit=LIMIT, progress=False)
        served = emu.stats()['requests']
        log = emu.log
    return df, served, log, out


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    "Records without what differs between two servers' answers for one image: the host and signature of its URL."
    return df.assign(url=df['url'].map(lambda u: urlsplit(u).path)).sort_values('id').reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ pure parts
def test_start_boxes_respect_the_limit_and_cover_the_area(city):
    area = as_area(city[1])
    for cap in (0.01, 0.003, 0.0007):
        boxes = cover_boxes(area, cap)
        assert all((b[2] - b[0]) * (b[3] - b[1]) <= cap for b in boxes)
        assert shapely.union_all([shapely.box(*b) for b in boxes]).covers(area)
        assert all(shapely.box(*b).intersects(area) for b in boxes)
    assert clip_box((10.0, 10.0, 10.1, 10.1), area) is None


def test_kd_cells_tile_the_box_with_equal_shares():
    rng = np.random.default_rng(0)
    x, y = rng.normal(2.0, 0.01, 2000), rng.normal(41.0, 0.02, 2000)
    b = (1.9, 40.9, 2.1, 41.1)
    for k in (2, 7, 16):
        cells = kd_cells(b, x, y, k)
        assert len(cells) == k
        assert abs(sum((c[2] - c[0]) * (c[3] - c[1]) for c in cells) - 0.04) < 1e-12
        counts = [int(((x >= c[0]) & (x <= c[2]) & (y >= c[1]) & (y <= c[3])).sum()) for c in cells]
        assert sum(counts) == 2000 and max(counts) - min(counts) <= 2


def test_parse_images_falls_back_to_raw_geometry_and_keeps_extras():
    data = [{'id': 1, 'geometry': {'type': 'Point', 'coordinates': [2.1, 41.4]}, 'captured_at': 1_600_000_000_123,
             'sequence': 'abc', 'creator': {'username': 'ana', 'id': '7'}, 'thumb_2048_url': 'http://x/2048.jpg'},
            {'id': '2', 'computed_geometry': {'type': 'Point', 'coordinates': [2.2, 41.3]},
             'geometry': {'type': 'Point', 'coordinates': [0, 0]}},
            {'no_id': True}]
    df = images_frame(parse_images(data))
    assert list(df.columns[:len(COLUMNS)]) == list(COLUMNS)
    assert df['id'].tolist() == ['1', '2'] and df['lat'].tolist() == [41.4, 41.3]
    assert df['url'].iloc[0] == 'http://x/2048.jpg' and df['creator_username'].iloc[0] == 'ana'
    assert str(df['captured_at'].dtype) == 'datetime64[ns, UTC]'
    assert df['captured_at'].iloc[0] == pd.Timestamp('2020-09-13 12:26:40.123', tz='UTC')
    empty = images_frame([])
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0


def test_time_split_never_leaves_a_gap():
    t = np.array([5, 5, 9, 9, 10, 40], float)
    (a0, a1), (b0, b1) = _time_split((0, 100), t)
    assert a0 == 0 and b1 == 100 and b0 <= a1 + 1 and a1 < 40 and b0 > 5
    assert _time_split(None, np.array([7, 7, 7], float)) is None


# ------------------------------------------------------------------------------------------------ crawling
def test_every_image_inside_exactly_once(clean, truth, city):
    df, served, log, out = clean
    assert df['id'].is_unique and set(df['id']) == truth
    assert df['source'].eq('mapillary').all() and str(df['captured_at'].dtype) == 'datetime64[ns, UTC]'
    world = city[2]
    ref = world.mapillary.set_index('id').loc[df['id']]
    assert np.allclose(df['lat'], ref['lat']) and (df['sequence'].to_numpy() == ref['sequence'].to_numpy()).all()
    assert (df['captured_at'] == pd.to_datetime(ref['captured_at'].to_numpy(), unit='ms', utc=True)).all()
    s = df.attrs['summary']
    assert s['requests'] == served == s['boxes'] and s['depth'] >= 2 and s['saturated'] == []
    # the GeoParquet file: same records, point geometry in EPSG:4326
    g = gpd.read_parquet(out / 'records.parquet')
    assert g.crs.to_epsg() == 4326 and len(g) == len(df)
    assert np.allclose(g.geometry.x, g['lon']) and set(g['id']) == truth
    # the map of boxes comes from the journal
    assert len(crawl_boxes(out)) == s['boxes']


def test_boxes_missing_the_area_are_never_requested(clean, city):
    area = as_area(city[1])
    boxes = [tuple(map(float, e['params']['bbox'].split(','))) for e in clean[2] if e['endpoint'] == 'search']
    assert boxes and all(shapely.box(*b).intersects(area) for b in boxes)
    assert all((b[2] - b[0]) * (b[3] - b[1]) <= 0.01 * (1 + 1e-9) for b in boxes)


def test_fewer_box_searches_than_quartering(clean, city):
    _, areas, world = city
    paper = quadtree_requests(cover_boxes(as_area(areas)), lambda b: len(world.mapillary_in(b)), limit=LIMIT)
    assert clean[0].attrs['summary']['boxes'] <= 0.8 * paper['box_requests']


def test_faults_give_the_same_result(clean, city):
    _, areas, world = city
    faults = Faults(p429=0.05, p403_throttle=0.03, retry_after=1, p5xx=0.03, p_drop=0.02, p_malformed=0.01, seed=11)
    with Emulator(world, faults=faults) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, limit=LIMIT, progress=False)
        stats = emu.stats()
    for kind in ('p429', 'p403_throttle', 'p5xx', 'p_drop', 'p_malformed'): assert stats.get(f'faults.{kind}', 0) > 0, kind
    assert df.attrs['summary']['retries'] > 0
    pd.testing.assert_frame_equal(comparable(df), comparable(clean[0]))


def test_oversized_boxes_are_split(clean, city):
    "A server whose box limit is lower than max_bbox_area answers 400: the boxes are quartered, nothing is lost."
    _, areas, world = city
    with Emulator(world, max_bbox_area=0.002) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, limit=LIMIT, progress=False)
        assert emu.stats().get('status.mapillary.search.400', 0) > 0
    pd.testing.assert_frame_equal(comparable(df), comparable(clean[0]))


def test_time_window(city, truth):
    _, areas, world = city
    m = world.mapillary
    t0, t1 = np.quantile(m['captured_at'], [0.3, 0.6]).astype(np.int64)
    start, end = pd.Timestamp(int(t0), unit='ms', tz='UTC'), pd.Timestamp(int(t1), unit='ms', tz='UTC')
    want = set(m['id'][(m['captured_at'] >= t0) & (m['captured_at'] <= t1)]) & truth
    with Emulator(world) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, limit=LIMIT, progress=False,
                          start=start.isoformat(), end=end.to_pydatetime())
    assert set(df['id']) == want and df['id'].is_unique


def test_stacks_split_by_time_and_saturated_boxes_reported(city):
    "Images piled on one point: split by capture time; a pile that shares one millisecond is reported, not dropped."
    _, areas, world = city
    m = world.mapillary
    base = m[m['district'].notna()].iloc[0]
    rng = np.random.default_rng(5)
    def pile(n, lon, lat, times, tag):
        rows = pd.DataFrame([base] * n).reset_index(drop=True)
        rows['id'] = [f'{tag}{i:06d}' for i in range(n)]
        rows['lon'], rows['lat'], rows['gps_lon'], rows['gps_lat'] = lon, lat, lon, lat
        rows['captured_at'] = times
        return rows
    p = shapely.Point(base['lon'], base['lat'])
    timed = pile(250, p.x + 0.002, p.y, rng.integers(1.5e12, 1.6e12, 250), '91')
    same = pile(130, p.x - 0.002, p.y, np.full(130, 1_555_555_555_555), '92')
    mly = pd.concat([m, timed, same], ignore_index=True)
    mly['id'] = mly['id'].astype(str)
    piled = World(world.areas, mly, world.flickr, seed=world.seed)
    area = as_area(areas)
    inside = set(mly['id'][shapely.intersects_xy(area, mly['lon'].to_numpy(), mly['lat'].to_numpy())])
    assert set(timed['id']) | set(same['id']) <= inside
    with Emulator(piled) as emu, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, limit=LIMIT, progress=False)
    s = df.attrs['summary']
    assert len(s['saturated']) == 1 and any('still full' in str(w.message) for w in caught)
    got = set(df['id'])
    assert set(timed['id']) <= got  # the time split found the whole pile
    assert len(got & set(same['id'])) == LIMIT  # the saturated box: what the API returned is kept
    assert got - set(same['id']) == inside - set(same['id'])  # and nothing else is missing


# ------------------------------------------------------------------------------------------------ crash safety
CRAWLER = '''
import os, sys
import geopandas as gpd
from geoloc.mapillary import crawl_images
crawl_images(gpd.read_file(sys.argv[1]), os.environ['TEST_MLY_TOKEN'], base_url=sys.argv[2], out=sys.argv[3],
             limit=int(sys.argv[4]), workers=4, progress=False)
'''


def test_sigkill_three_times_then_resume(clean, city, tmp_path):
    path, areas, world = city
    df0, served0 = clean[0], clean[1]
    out = tmp_path / 'crawl'
    script = tmp_path / 'crawler.py'
    script.write_text(CRAWLER)
    env = {**os.environ, 'TEST_MLY_TOKEN': MAPILLARY_TOKEN, 'PYTHONPATH': str(ROOT)}
    rng = np.random.default_rng(2024)
    with Emulator(world, faults=Faults(latency=0.01, jitter=0.02)) as emu:
        marks = np.sort(rng.uniform(0.1, 0.85, 3)) * served0  # kill when this many searches have been served
        killed = 0
        for mark in marks:
            proc = subprocess.Popen([sys.executable, str(script), str(path), emu.mapillary_url, str(out), str(LIMIT)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.time() + 60
            while emu.stats().get('requests', 0) < mark and proc.poll() is None and time.time() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))  # a random moment: between answers, in a journal write, anywhere
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
            killed += 1
        lines = (out / 'journal.jsonl').read_bytes().count(b'\n')
        assert 0 < lines < clean[0].attrs['summary']['tasks']  # the kills left the crawl unfinished
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=out, limit=LIMIT, progress=False)
        total = emu.stats()['requests']
    assert killed == 3
    assert df.attrs['summary']['replayed'] > 0
    pd.testing.assert_frame_equal(comparable(df), comparable(df0))
    assert total <= 1.10 * served0, (total, served0)
    pd.testing.assert_frame_equal(comparable(gpd.read_parquet(out / 'records.parquet').drop(columns='geometry')),
                                  comparable(df))


def test_another_crawl_in_the_same_folder_is_refused(clean, city):
    out = clean[3]
    with pytest.raises(ValueError, match='holds a mapillary crawl with other settings'):
        crawl_images(city[1], MAPILLARY_TOKEN, base_url='http://127.0.0.1:9', out=out, limit=LIMIT + 1, progress=False)


# ------------------------------------------------------------------------------------------------ secrets and errors
def test_token_rejected_stops_at_once(city, tmp_path):
    _, areas, world = city
    bad = 'MLY|31337|not-the-right-token'
    with Emulator(world) as emu:
        t = time.monotonic()
        with pytest.raises(TokenRejected, match='token rejected') as e:
            crawl_images(areas, bad, base_url=emu.mapillary_url, out=tmp_path, limit=LIMIT, progress=False)
        assert time.monotonic() - t < 10
        assert emu.stats()['requests'] <= len(cover_boxes(as_area(areas)))  # one answer per start box at most
    assert bad not in str(e.value) and bad not in repr(e.value)
    assert not any(bad.encode() in p.read_bytes() for p in tmp_path.rglob('*') if p.is_file())


def test_user_errors_are_explained(city, tmp_path):
    _, areas, world = city
    with Emulator(world) as emu:
        with pytest.raises(ApiError, match='nonexisting field'):
            crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, fields=['id', 'colour'], progress=False)
    with pytest.raises(ValueError, match='no Mapillary token'):
        crawl_images(areas, '  ', base_url='http://127.0.0.1:9', progress=False)
    with pytest.raises(ValueError, match='is after end'):
        crawl_images(areas, MAPILLARY_TOKEN, base_url='http://127.0.0.1:9', start='2024-01-02', end='2024-01-01')
    with pytest.raises(ValueError, match='has no polygon'):
        crawl_images(shapely.Point(1.2, 39.9).buffer(0), MAPILLARY_TOKEN, base_url='http://127.0.0.1:9')


def test_the_token_never_leaks(clean, city, tmp_path, caplog, capfd):
    "Not in logs (urllib3 debug included), not in output, not in any file of the out folder, not in the server's log."
    _, areas, world = city
    caplog.set_level(logging.DEBUG)
    with Emulator(world, faults=Faults(p5xx=0.05, p_drop=0.02, seed=3)) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=tmp_path, limit=LIMIT,
                          progress=True)
        log = json.dumps(emu.log)
    secret = MAPILLARY_TOKEN.encode()
    files = [p for p in tmp_path.rglob('*') if p.is_file()]
    assert {p.name for p in files} >= {'journal.jsonl', 'crawl.json', 'records.parquet'}
    assert not any(secret in p.read_bytes() for p in files)
    out, err = capfd.readouterr()
    assert MAPILLARY_TOKEN not in out + err + caplog.text + log
    assert 'images' in out and len(df) == len(clean[0])
    assert MAPILLARY_TOKEN not in repr(df.attrs['summary'])


def _cli(*args, env=None):
    return subprocess.run([sys.executable, '-m', 'geoloc.cli', 'mapillary', *args], capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': str(ROOT), **(env or {})}, timeout=120)


def test_cli(clean, city, tmp_path):
    path, areas, world = city
    with Emulator(world) as emu:
        ok = _cli('--city', str(path), '--token-env', 'MY_MLY', '--out', str(tmp_path / 'cli'), '--api-url',
                  emu.mapillary_url, '--quiet', '--workers', '4', env={'MY_MLY': MAPILLARY_TOKEN})
        bad = _cli('--city', str(path), '--token-env', 'MY_MLY', '--out', str(tmp_path / 'bad'), '--api-url',
                   emu.mapillary_url, '--quiet', env={'MY_MLY': 'MLY|1|wrong'})
    assert ok.returncode == 0, ok.stderr[-2000:]
    g = gpd.read_parquet(tmp_path / 'cli' / 'records.parquet')
    assert len(g) == len(clean[0]) and set(g['id']) == set(clean[0]['id'])  # limit 2000 here: same images
    assert bad.returncode == 1 and 'token rejected' in bad.stderr and 'MLY|1|wrong' not in bad.stderr + bad.stdout
    assert 'Traceback' not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match='NOT_SET_ANYWHERE is not set'):
        mapillary_cli(city=str(path), token_env='NOT_SET_ANYWHERE', out=str(tmp_path / 'unset'))


@pytest.mark.parametrize('kind', ['message', 'user_msg', '504'])
def test_dense_box_timeouts_are_split_not_retried(city, truth, tmp_path, kind):
    """Boxes matching more than `dense_above` images fail every time, in each of the real API's shapes (500 code 1,
    the hint only in error_user_msg, a 504): they are split at once."""
    _, areas, world = city
    with Emulator(world, faults=Faults(dense_above=3 * LIMIT, dense_kind=kind)) as emu:
        df = crawl_images(areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=tmp_path, limit=LIMIT, progress=False)
        stats = emu.stats()
    assert set(df['id']) == truth and df['id'].is_unique
    status = 504 if kind == '504' else 500
    assert stats.get(f'status.mapillary.search.{status}', 0) > 0  # dense boxes were met (and, never healing, split)
