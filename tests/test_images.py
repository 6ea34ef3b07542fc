"""geoloc.images as a user drives it: downloads through faults and a SIGKILL, expired thumbnails, the token kept secret."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import urllib3
from PIL import Image

from geoloc.images import download_images
from geoloc.labeling import build_dataset, load_dataset, save_dataset
from geoloc.sim import MAPILLARY_TOKEN, Emulator, Faults, synthetic_city, synthetic_world

GEOLOC = [sys.executable, '-m', 'geoloc.cli']


def geoloc(*args, **kw):
    return subprocess.run([*GEOLOC, *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


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


def test_ids_never_share_a_file(tmp_path):
    "Ids that differ only by characters a file name cannot hold get their own files; one id with two URLs is refused."
    from geoloc.labeling import LabelingError, image_path
    ids = ['a/b', 'a_b', 'a\0b', '.x', 'x', 'X']
    assert len({image_path('flickr', i) for i in ids}) == len(ids)
    assert all('/' not in p.split('images/flickr/')[1] for p in (image_path('flickr', i) for i in ids))
    ds = pd.DataFrame({'id': ['42', '42'], 'source': 'flickr', 'url': ['http://127.0.0.1:9/a.jpg', 'http://127.0.0.1:9/b.jpg']})
    with pytest.raises(LabelingError, match='two different URLs'):
        download_images(ds, tmp_path, progress=False)
    assert not list((tmp_path / 'images').rglob('*.jpg'))
