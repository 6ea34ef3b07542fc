"""geoloc serve and geoloc watch: the API through FastAPI's test client (good photos, bad ones mixed in, wrong run,
token, oversize), the page in headless Chromium driven by Playwright (skipped without Chromium), and the folder
watcher killed with SIGKILL and restarted (nothing twice, nothing lost)."""
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

import geoloc.train  # noqa: F401 (registers focalnet_pico_srf)
from geoloc.geojson import area_centroids
from geoloc.retrieval import RetrievalIndex
from geoloc.sim import synthetic_city
from geoloc.weights import save_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A model folder as geoloc train writes it (an untrained tiny FocalNet: serving does not care how good it is)."
    d = tmp_path_factory.mktemp('serve') / 'city'
    areas = synthetic_city(5, seed=4)
    torch.manual_seed(0)
    model = timm.create_model('focalnet_pico_srf', num_classes=len(areas))
    save_model(d / 'model', model, arch='focalnet_pico_srf', classes=list(areas.name), areas=areas.to_json(),
               transform=dict(size=40, resize=48, squash=False, interpolation='bicubic', mean=[0.485, 0.456, 0.406],
                              std=[0.229, 0.224, 0.225]), extra={'calibration': {'temperature': 1.0}})
    c, rng = area_centroids(areas), np.random.default_rng(0)
    lab = rng.integers(0, len(areas), 200)
    idx = RetrievalIndex(torch.randn(200, model.num_features), c.lat.to_numpy()[lab] + rng.normal(0, 1e-3, 200),
                         c.lon.to_numpy()[lab] + rng.normal(0, 1e-3, 200), lab, radius_scale=2.0, coverage=0.8)
    idx.save(d / 'model' / 'index.safetensors')
    return d


def _jpeg(seed, size=(160, 120), **kw):
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)).resize(size)
    b = io.BytesIO(); im.save(b, 'JPEG', quality=90, **kw); return b.getvalue()


@pytest.fixture(scope='module')
def client(run):
    from fastapi.testclient import TestClient
    from geoloc.serve import create_app
    return TestClient(create_app([run], max_upload_mb=3, max_file_mb=2, max_files=8))


def _files(*named): return [('files', (n, d, 'image/jpeg')) for n, d in named]


def test_api_places_good_photos_and_explains_bad_ones(client):
    huge = io.BytesIO(); Image.new('L', (12_500, 12_500)).save(huge, 'PNG')
    gps = Image.Exif(); gps[0x8825] = {1: 'N', 2: (4.0, 36.0, 0.0), 3: 'W', 4: (74.0, 4.0, 0.0)}
    r = client.post('/api/predict', files=_files(('a.jpg', _jpeg(1)), ('page.jpg', b'<!DOCTYPE html><p>429</p>'),
                                                 ('../../etc/b.jpg', _jpeg(2, exif=gps)), ('half.jpg', _jpeg(3)[:1500]),
                                                 ('huge.png', huge.getvalue()), ('notes.jpg', b'just text')),
                    data={'top_k': '2'})
    assert r.status_code == 200, r.text
    res = r.json()['results']
    assert [x['name'] for x in res] == ['a.jpg', 'page.jpg', 'b.jpg', 'half.jpg', 'huge.png', 'notes.jpg']   # no paths
    assert [x['error'] for x in res] == [None, 'not an image (an HTML or XML page)', None, 'truncated JPEG',
                                         'too many pixels (12500 x 12500)', 'not an image (unknown format)']
    ok = res[0]
    assert set(ok) == {'name', 'district', 'probability', 'top_k', 'lat', 'lon', 'radius_m', 'unsure', 'exif_gps', 'error'}
    assert len(ok['top_k']) == 2 and ok['top_k'][0]['district'] == ok['district'] and ok['radius_m'] > 0
    assert res[2]['exif_gps']['lat'] == pytest.approx(4.6) and res[2]['exif_gps']['lon'] == pytest.approx(-74.0667, abs=1e-4)
    unsure = client.post('/api/predict', files=_files(('a.jpg', _jpeg(1))), data={'min_confidence': '0.99'}).json()['results'][0]
    assert unsure['unsure'] is True and unsure['lat'] is None and unsure['district'] == ok['district']
    h = client.get('/api/health').json()
    assert h['runs'][0]['name'] == 'city' and h['runs'][0]['indexed_photos'] == 200
    assert client.get('/api/areas').json()['features'][0]['properties']['name']
    assert client.get('/docs').status_code == 200 and '/api/predict' in client.get('/openapi.json').text


def test_api_refuses_with_json_reasons(client, run):
    from fastapi.testclient import TestClient
    from geoloc.serve import create_app
    r = client.post('/api/predict', files=_files(('a.jpg', _jpeg(1))), data={'run': 'atlantis'})
    assert r.status_code == 404 and "unknown run 'atlantis'" in r.json()['error']
    big = client.post('/api/predict', files=_files(('big.jpg', b'\xff\xd8\xff' + os.urandom(3_500_000))))
    assert big.status_code == 413 and 'larger than 3 MB' in big.json()['error']
    one = client.post('/api/predict', files=_files(('a.jpg', _jpeg(1)), ('b.jpg', b'\xff\xd8\xff' + b'\0' * 2_100_000)))
    assert one.status_code == 200 and one.json()['results'][1]['error'] == 'too large (over 2 MB)'
    many = client.post('/api/predict', files=_files(*[(f'{i}.jpg', _jpeg(i)) for i in range(9)]))
    assert many.status_code == 413 and 'at most 8' in many.json()['error']
    assert client.post('/api/predict', data={'top_k': '3'}).json()['error'].startswith('no photos')
    assert client.post('/api/predict', files=_files(('a.jpg', _jpeg(1))), data={'top_k': 'x'}).status_code == 422
    assert client.post('/api/predict', files=_files(('a.jpg', _jpeg(1))), data={'urls': 'file:///etc/passwd'}).json(
        )['results'][1]['error'] == 'not an http(s) URL'
    locked = TestClient(create_app([run], token='s3cret'))
    assert locked.post('/api/predict', files=_files(('a.jpg', _jpeg(1)))).status_code == 401
    assert locked.get('/api/health', headers={'Authorization': 'Bearer wrong'}).status_code == 401
    assert locked.get('/api/health', headers={'Authorization': 'Bearer s3cret'}).json()['status'] == 'ok'
    assert 'Traceback' not in r.text + big.text + many.text


def test_keep_saves_uploads_under_server_names(run, tmp_path):
    from fastapi.testclient import TestClient
    from geoloc.serve import create_app
    c = TestClient(create_app([run], keep=tmp_path / 'kept'))
    c.post('/api/predict', files=_files(('../../../evil.jpg', _jpeg(5)), ('x.jpg', b'<html>')))
    kept = list((tmp_path / 'kept').iterdir())
    assert len(kept) == 1 and kept[0].suffix == '.jpg' and len(kept[0].stem) == 32 and not (tmp_path / 'evil.jpg').exists()


def _chromium():
    exe = os.environ.get('GEOLOC_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not exe: pytest.skip('chromium is not installed (apt-get install chromium, or set GEOLOC_CHROMIUM)')
    pytest.importorskip('playwright.sync_api')
    return exe


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_page_in_a_real_browser_places_an_uploaded_photo(run, tmp_path):
    "Headless Chromium (Playwright), every outside address blocked: upload a photo, its marker and district appear."
    exe = _chromium()
    import uvicorn
    from playwright.sync_api import sync_playwright
    from geoloc.serve import create_app
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app([run]), host='127.0.0.1', port=port, log_level='warning'))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started: time.sleep(0.05)
    base = f'http://127.0.0.1:{port}/'
    (tmp_path / 'street.jpg').write_bytes(_jpeg(7, size=(320, 240)))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=['--no-sandbox', '--disable-gpu'])
            page = browser.new_page(viewport={'width': 1100, 'height': 700})
            page.route('**/*', lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
            page.goto(base)
            page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
            assert page.locator('path.geoloc-district').count() == 5
            page.fill('#minconf', '0')                       # an untrained model is never sure: place it anyway
            page.set_input_files('#files', str(tmp_path / 'street.jpg'))
            try: page.wait_for_selector('body[data-placed="1"]', timeout=30_000)
            except Exception: raise AssertionError(page.inner_text('#status')) from None
            assert page.locator('path.geoloc-photo').count() == 1 and page.locator('path.geoloc-radius').count() == 1
            item = page.locator('#results li').first.inner_text()
            assert 'street.jpg' in item and '%' in item and ' m' in item
            art = Path(os.environ.get('GEOLOC_ARTIFACTS', ROOT / 'data' / 'artifacts'))
            art.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(art / 'serve-page.png'))
            assert (art / 'serve-page.png').stat().st_size > 10_000
            browser.close()
    finally:
        server.should_exit = True


def _csv_images(out: Path) -> list:
    p = out / 'predictions.parquet'
    return pd.read_parquet(p).image.tolist() if p.exists() else []


def _wait(out, n, proc, limit=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if len(_csv_images(out)) >= n: return
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.3)
    raise AssertionError(f'{len(_csv_images(out))} of {n} photos placed after {limit} s')


def test_watch_survives_sigkill_nothing_twice_nothing_lost(run, tmp_path):
    inbox, out = tmp_path / 'inbox', tmp_path / 'out'
    (inbox / 'day2').mkdir(parents=True)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'geoloc.cli', 'watch', str(inbox), '--run', str(run), '--out', str(out),
           '--interval', '0.3', '--settle', '0.6', '--tiles', 'none']
    start = lambda: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = start()
    for i in range(3): (inbox / f'{i}.jpg').write_bytes(_jpeg(i))
    with open(inbox / 'slow.jpg', 'wb') as f:          # written in two parts, a second apart: waited for
        data = _jpeg(9); f.write(data[:800]); f.flush(); time.sleep(1.2); f.write(data[800:])
    _wait(out, 4, proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    for i in range(3, 5): (inbox / 'day2' / f'{i}.jpg').write_bytes(_jpeg(i))   # arrive while nothing watches
    proc = start()
    (inbox / '5.jpg').write_bytes(_jpeg(5))
    _wait(out, 7, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    images = _csv_images(out)
    assert len(images) == len(set(images)) == 7
    assert sorted(Path(i).name for i in images) == ['0.jpg', '1.jpg', '2.jpg', '3.jpg', '4.jpg', '5.jpg', 'slow.jpg']
    placed = pd.read_parquet(out / 'predictions.parquet')
    assert (placed.loc[placed.image.str.endswith('slow.jpg'), 'status'] != 'failed').all()   # not read half-written


def test_pasted_urls_are_fetched_capped_and_redacted(client, tmp_path, serve_folder):
    "URLs in the form are fetched by the server (a real local HTTP server): placed, refused per photo, keys redacted."
    (tmp_path / 'street.jpg').write_bytes(_jpeg(11))
    (tmp_path / 'limit.jpg').write_bytes(b'<html>429 Too Many Requests</html>')
    base = serve_folder(tmp_path)
    urls = f'{base}/street.jpg?access_token=MLY|1|SECRET\n{base}/gone.jpg\n{base}/limit.jpg\n'
    res = client.post('/api/predict', files=_files(('a.jpg', _jpeg(1))), data={'urls': urls}).json()['results']
    assert [r['error'] for r in res] == [None, None, 'HTTP 404', 'not an image (an HTML or XML page)']
    assert res[1]['district'] and 'SECRET' not in str(res) and res[1]['name'].endswith('access_token=***')
