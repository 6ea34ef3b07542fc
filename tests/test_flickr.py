"""geoloc.flickr against the emulated Flickr: faults, SIGKILL and rerun, the CLI, the key kept secret."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import shapely

from geoloc.sim import FLICKR_KEY, Emulator, Faults, synthetic_world
from geoloc.flickr import CAP, crawl_photos, paper_keywords
from geoloc.geojson import city_boundary
from geoloc.sim import synthetic_city

GEOLOC = [sys.executable, '-m', 'geoloc.cli']
# every kind of trouble Flickr has: code 105 at HTTP 200, 429 (Retry-After 0 s), 5xx, dropped connections,
# truncated or HTML bodies
FAULTS = dict(p_unavailable=0.08, p_search_unavailable=0.05, p429=0.06, retry_after=0, p5xx=0.06, p_drop=0.05,
              p_malformed=0.06)  # p_search_unavailable: code 10, as recorded (tests/fixtures/recorded)


@pytest.fixture(scope='module')
def city(tmp_path_factory):
    "A synthetic city, also as a file for the CLI."
    c = synthetic_city(seed=0)
    f = tmp_path_factory.mktemp('city') / 'districts.geojson'
    c.to_file(f, driver='GeoJSON')
    return c, f


UPLOADS_TO = '2026-11-02'  # one upload window for every run (the emulated world ends on 2026-11-01)


def truth(world, areas) -> set:
    "Ids of the world's geotagged photos inside the city (the emulator's own table)."
    f = world.flickr[world.flickr['lat'].notna()]
    return set(f.loc[shapely.intersects_xy(city_boundary(areas), f['lon'], f['lat']), 'id'])


def files_text(folder) -> bytes:
    return b''.join(p.read_bytes() for p in folder.rglob('*') if p.is_file())


def portless(df, emu) -> pd.DataFrame:
    "Records with the emulator's host taken out of image URLs (two emulators listen on different ports)."
    return df.assign(url=df['url'].str.replace(emu.flickr_url.rsplit('/services', 1)[0], '', regex=False))


def crawl(emu, areas, out, **kw):
    return crawl_photos(areas, FLICKR_KEY, base_url=emu.flickr_url, out=out, calls_per_hour=None, progress=False,
                        max_upload_date=UPLOADS_TO, **kw)


@pytest.fixture(scope='module')
def world(city):
    "About 9,400 geotagged photos in the city's box: the whole-box search is split, 'synthetica' is capped."
    return synthetic_world(city[0], mapillary=200, flickr=8_000, seed=1)


@pytest.fixture(scope='module')
def clean(city, world, tmp_path_factory):
    "A clean crawl of both modes: records, summaries, requests the emulator served."
    areas, tmp = city[0], tmp_path_factory.mktemp('clean')
    kws = ['synthetica', paper_keywords(areas, 'x')[0]]
    with Emulator(world) as emu:
        area = portless(crawl(emu, areas, tmp / 'area'), emu)
        n_area = emu.stats()['requests']
        paper = portless(crawl(emu, areas, tmp / 'paper', keywords=kws), emu)
    return dict(area=area, paper=paper, kws=kws, area_requests=n_area, folder=tmp)


def test_clean_crawl_finds_every_photo_once(city, world, clean):
    "Area mode: every geotagged photo inside the city, once; paper mode: each keyword up to the cap, query kept."
    a, p = clean['area'], clean['paper']
    assert set(a['id']) == truth(world, city[0]) and a['id'].is_unique
    assert a.attrs['summary']['depth'] >= 1 and a.attrs['summary']['served_per_unique'] <= 1.3
    q = pd.DataFrame(p.attrs['summary']['queries']).set_index('query')
    assert q.loc['synthetica', 'total'] > CAP and q.loc['synthetica', 'records'] == CAP  # stopped at the cap
    assert (q['records'] == q['total'].clip(upper=CAP)).all()
    assert set(p['query']) == set(clean['kws']) and not p.duplicated(['query', 'id']).any()
    assert FLICKR_KEY.encode() not in files_text(clean['folder'])


def test_faults_change_nothing(city, world, clean, tmp_path):
    """With 105s, code 10s, 429s, 5xx, drops and malformed bodies mixed in (about a third of answers), both modes give exactly
    the clean run's records."""
    areas = city[0]
    with Emulator(world, faults=Faults(**FAULTS, seed=3)) as emu:
        area = portless(crawl(emu, areas, tmp_path / 'area'), emu)
        paper = portless(crawl(emu, areas, tmp_path / 'paper', keywords=clean['kws']), emu)
        s = emu.stats()
    faults = {k: v for k, v in s.items() if k.startswith('faults.')}
    print(f'[figure] faults injected: {faults}; {s["requests"]} requests')
    assert set(faults) == {f'faults.{k}' for k in FAULTS if k != 'retry_after'} and sum(faults.values()) >= 10
    assert area.attrs['summary']['retries'] + paper.attrs['summary']['retries'] == sum(faults.values())
    pd.testing.assert_frame_equal(area, clean['area'])
    pd.testing.assert_frame_equal(paper, clean['paper'])


def test_sigkill_three_times_then_rerun(city, world, clean, tmp_path):
    """The CLI crawl killed (SIGKILL) three times part-way and rerun gives the clean run's records, with at most 10%
    more requests in all; the key is in no file and no output."""
    areas, areas_file = city
    base = clean['area_requests']
    tasks = clean['area'].attrs['summary']['tasks']
    assert base == tasks >= 30  # one request per task; three kills of one worker cost at most 3
    out = tmp_path / 'killed'
    journal = out / 'journal.jsonl'
    with Emulator(world) as emu:
        cmd = [*GEOLOC, 'flickr', '--city', areas_file, '--key-env', 'FLICKR_KEY', '--out', out, '--api-url',
               emu.flickr_url, '--workers', '1', '--calls-per-hour', '0', '--max-upload-date', UPLOADS_TO, '--quiet']
        cmd, env = list(map(str, cmd)), {**os.environ, 'FLICKR_KEY': FLICKR_KEY}
        for frac in (0.25, 0.5, 0.75):
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 60
            while time.time() < deadline and p.poll() is None:
                if journal.exists() and journal.read_bytes().count(b'\n') >= frac * tasks: break
                time.sleep(0.005)
            assert p.poll() is None, p.communicate()
            os.kill(p.pid, signal.SIGKILL)
            p.wait(); p.stderr.close()
        assert not (out / 'records.parquet').exists()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        total = emu.stats()['requests']
        again = portless(pd.read_parquet(out / 'records.parquet').drop(columns='geometry'), emu)
    print(f'[figure] clean run {base} requests; killed 3 times + rerun {total} (+{100 * (total / base - 1):.1f}%)')
    assert total <= 1.10 * base
    pd.testing.assert_frame_equal(again, clean['area'])
    assert FLICKR_KEY.encode() not in files_text(out) and FLICKR_KEY not in r.stdout + r.stderr


def test_bad_key_and_missing_key_stop_at_once(city, tmp_path):
    "A rejected key stops after one request with one line naming the fix, never the key; an empty variable too."
    areas, areas_file = city
    world = synthetic_world(areas, mapillary=200, flickr=300, seed=4)
    bad = 'f' * 32
    with Emulator(world) as emu:
        r = subprocess.run([*GEOLOC, 'flickr', '--city', str(areas_file), '--key-env', 'MY_FLICKR', '--out',
                            str(tmp_path / 'bad'), '--api-url', emu.flickr_url, '--quiet'],
                           env={**os.environ, 'MY_FLICKR': bad}, capture_output=True, text=True, timeout=120)
        assert emu.stats()['requests'] == 1
    assert r.returncode == 1 and 'code 100' in r.stderr and 'Fix' in r.stderr and 'Traceback' not in r.stderr
    assert bad not in r.stderr + r.stdout and bad.encode() not in files_text(tmp_path / 'bad')
    r = subprocess.run([*GEOLOC, 'flickr', '--city', str(areas_file), '--key-env', 'NO_SUCH_VAR_42', '--out',
                        str(tmp_path / 'none')], env={k: v for k, v in os.environ.items() if k != 'NO_SUCH_VAR_42'},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'NO_SUCH_VAR_42 is empty' in r.stderr


def test_cli_authors_keywords_runs_their_exact_list(city, tmp_path, monkeypatch):
    "`--keywords authors` searches the authors' 14 Barcelona terms, one query each, and keeps each record's query."
    from geoloc.cli import main
    from geoloc.flickr import AUTHORS_BCN_KEYWORDS
    areas, areas_file = city
    world = synthetic_world(areas, mapillary=100, flickr=400, seed=5)
    monkeypatch.setenv('FLICKR_KEY', FLICKR_KEY)
    with Emulator(world) as emu:
        rc = main(['flickr', '--city', str(areas_file), '--keywords', 'authors', '--out', str(tmp_path / 'a'),
                   '--api-url', emu.flickr_url, '--calls-per-hour', '0', '--quiet'])
        searches = emu.stats().get('requests', 0)
    assert rc == 0 and searches >= len(AUTHORS_BCN_KEYWORDS)
    df = pd.read_parquet(tmp_path / 'a' / 'records.parquet')
    assert set(df['query']) <= set(AUTHORS_BCN_KEYWORDS)
    saved = json.loads((tmp_path / 'a' / 'crawl.json').read_text())
    assert saved['settings']['keywords'] == AUTHORS_BCN_KEYWORDS
