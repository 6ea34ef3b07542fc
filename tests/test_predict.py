"""geoloc.predict end to end on the CPU: a trained run places photos given as files, folders and URLs; bad inputs are
reported per photo; the answers equal the training stage's validation transform; CSV, GeoJSON and the HTML map
(opened in headless Chromium with every outside address blocked); `geoloc predict`."""
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from PIL import Image

from geoloc.outputs import prediction_map, to_geojson, write_predictions
from geoloc.photos import ImageError, decode_image, image_sources, read_image
from geoloc.predict import Geolocator, district_centroids
from geoloc.sim import toy_dataset
from geoloc.train import TrainConfig, load_run, predict_logits, train

ROOT = Path(__file__).resolve().parents[1]
GEOLOC = [sys.executable, '-m', 'geoloc.cli']
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Two cores shared by parallel test runs: torch's second thread would only wait for the first."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny FocalNet trained for a few epochs on a toy dataset of 6 districts (48 px images)."
    d = tmp_path_factory.mktemp('predict')
    ds = toy_dataset(d / 'ds', n_classes=6, per_class=16, size=48, seed=2)
    cfg = TrainConfig.fast('focalnet_pico_srf', epochs=3, warmup_epochs=1, lr=2e-3, lr_batch=16, bs=16, size=40,
                           resize=48, mixup=0, cutmix=0, randaug='', reprob=0, compile=False, workers=0)
    return train(ds, cfg, d / 'run', progress=False)


@pytest.fixture(scope='module')
def geo(run): return Geolocator.load(run)


@pytest.fixture(scope='module')
def photos(run, tmp_path_factory):
    "A folder of 8 validation photos of the run's dataset (in a sub-folder too), upscaled like full-size photos."
    ds = json.loads((run / 'source.json').read_text())['dataset']
    df = pd.read_parquet(Path(ds) / 'dataset.parquet')
    d = tmp_path_factory.mktemp('photos')
    (d / 'sub').mkdir()
    for k, (_, r) in enumerate(df[df.split == 'valid'].head(8).iterrows()):
        im = Image.open(Path(ds) / r.path).convert('RGB')
        im.resize((im.width * 8, im.height * 8)).save(d / ('sub' if k % 2 else '.') / f'{r.id}.jpg', quality=92)
    (d / 'notes.txt').write_text('not a photo, and not an image extension: skipped by folder expansion')
    return d


def _bytes(im, fmt='JPEG', **kw):
    buf = io.BytesIO(); im.save(buf, fmt, **kw); return buf.getvalue()


def test_sources_expand_folders_keep_urls_and_missing(photos, tmp_path):
    (tmp_path / 'empty').mkdir()
    srcs = image_sources([photos, 'https://example.org/a.jpg', tmp_path / 'nope.jpg', tmp_path / 'empty'])
    assert len(srcs) == 8 + 3
    assert all(s.endswith('.jpg') for s in srcs[:8]) and any('/sub/' in s for s in srcs[:8])
    assert srcs[8:] == ['https://example.org/a.jpg', str(tmp_path / 'nope.jpg'), str(tmp_path / 'empty')]


def test_decode_reasons_formats_and_exif():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    jpg = _bytes(im, quality=90)
    assert tuple(decode_image(jpg, resize=100).shape) == (3, 100, 133)
    assert tuple(decode_image(_bytes(im, 'PNG'), resize=100).shape) == (3, 100, 133)
    assert tuple(decode_image(_bytes(im, 'WEBP'), resize=0).shape) == (3, 300, 400)
    assert tuple(decode_image(_bytes(im.convert('RGBA'), 'PNG'), resize=0).shape) == (3, 300, 400)
    assert tuple(decode_image(jpg, resize=64, squash=True).shape) == (3, 64, 64)
    x, uri = decode_image(jpg, resize=100, thumbnail=32)
    assert uri.startswith('data:image/jpeg;base64,') and x.shape[1] == 100
    yy, xx = np.mgrid[0:300, 0:400]
    smooth = Image.fromarray(np.stack([xx * 255 // 400, yy * 255 // 300, (xx + yy) * 255 // 700], -1).astype(np.uint8))
    exif = Image.Exif(); exif[0x0112] = 8  # stored rotated 90 degrees clockwise: turn it back
    rotated = decode_image(_bytes(smooth.rotate(-90, expand=True), exif=exif), resize=0)
    assert tuple(rotated.shape) == (3, 300, 400)
    assert (rotated.float() - decode_image(_bytes(smooth), resize=0).float()).abs().mean() < 3
    for data, reason in [(jpg[:len(jpg) // 3], 'truncated JPEG'), (b'<html>429</html>', 'not an image (an HTML or XML page)'),
                         (b'GIF89a' + b'\x00' * 20, 'corrupt GIF'), (b'\x00' * 64, 'not an image (unknown format)')]:
        with pytest.raises(ImageError) as e: decode_image(data)
        assert str(e.value) == reason, data[:10]


def test_read_image_files_and_urls(tmp_path, serve_folder):
    (tmp_path / 'a.jpg').write_bytes(b'\xff\xd8\xff' + b'x' * 10)
    (tmp_path / 'empty.jpg').write_bytes(b'')
    base = serve_folder(tmp_path)
    assert read_image(str(tmp_path / 'a.jpg'))[:3] == b'\xff\xd8\xff'
    assert read_image(f'{base}/a.jpg')[:3] == b'\xff\xd8\xff'
    for src, reason in [(f'{base}/missing.jpg', 'HTTP 404'), (str(tmp_path / 'missing.jpg'), 'file not found'),
                        (str(tmp_path / 'empty.jpg'), 'empty file'), (str(tmp_path), 'a folder without image files'),
                        ('http://127.0.0.1:9/x.jpg', 'connection refused')]:
        with pytest.raises(ImageError) as e: read_image(src, timeout=5)
        assert str(e.value) == reason, src
    with pytest.raises(ImageError, match='too large'): read_image(str(tmp_path / 'a.jpg'), max_bytes=5)


def test_predict_matches_training_transform_and_batches(geo, run):
    "The answers are those of geoloc.train's validation transform on the same files, whatever the batch size."
    ds = json.loads((run / 'source.json').read_text())['dataset']
    df = pd.read_parquet(Path(ds) / 'dataset.parquet')
    files = [str(Path(ds) / p) for p in df.path[:11]]
    pred = geo.predict(files, top_k=6, bs=32)
    small = geo.predict(files, top_k=6, bs=4, workers=2)
    p = torch.softmax(predict_logits(load_run(run, trust_pickle=True), files) / geo.temperature, -1).numpy()
    names = np.array(geo.classes, dtype=object)
    assert (pred.district_1.to_numpy() == names[p.argmax(1)]).all()
    np.testing.assert_allclose(pred.prob_1, p.max(1), atol=1e-4)
    np.testing.assert_allclose(pred[[f'prob_{i}' for i in range(1, 7)]].sum(axis=1), 1, atol=1e-4)
    pd.testing.assert_frame_equal(pred, small, atol=1e-5)
    assert pred.status.eq('ok').all() and pred.error.isna().all()


def test_bad_inputs_reported_per_photo(geo, photos, tmp_path, serve_folder):
    good = sorted(str(p) for p in photos.rglob('*.jpg'))
    (tmp_path / 'page.jpg').write_bytes(b'<!DOCTYPE html><p>Rate limit exceeded</p>')
    (tmp_path / 'half.jpg').write_bytes(Path(good[0]).read_bytes()[:2000])
    shutil.copy(good[1], tmp_path / 'ok.jpg')
    base = serve_folder(tmp_path)
    srcs = [good[0], f'{base}/ok.jpg?access_token=MLY|123|SECRET', f'{base}/page.jpg', f'{base}/gone.jpg',
            str(tmp_path / 'half.jpg'), str(tmp_path / 'nothing.jpg'), good[1]]
    pred = geo.predict(srcs, bs=2, workers=3)
    assert pred.status.tolist() == ['ok', 'ok', 'failed', 'failed', 'failed', 'failed', 'ok']
    assert pred.error.tolist()[2:6] == ['not an image (an HTML or XML page)', 'HTTP 404', 'truncated JPEG', 'file not found']
    assert pred.district_1[1] == pred.district_1[6] and abs(pred.prob_1[1] - pred.prob_1[6]) < 1e-6  # same photo by URL
    assert 'SECRET' not in pred.to_csv() and pred.image[1].endswith('access_token=***')
    assert pred.loc[pred.status == 'failed', ['district_1', 'estimate_lat', 'district_centroid_lat']].isna().all().all()
    c = district_centroids(geo.areas).set_index('name')
    ok = pred[pred.status == 'ok']
    np.testing.assert_allclose(ok[['district_centroid_lat', 'district_centroid_lon']].to_numpy(float),
                               c.loc[ok.district_1, ['lat', 'lon']].to_numpy())
    nothing = geo.predict([tmp_path / 'nothing.jpg', tmp_path / 'page.jpg'])
    feats = to_geojson(nothing, geo.areas)['features']   # every photo kept, none placed
    assert nothing.status.eq('failed').all() and [f['geometry'] for f in feats] == [None, None]


def test_hostile_files_are_refused_without_reading_them(geo, photos, tmp_path):
    "A device, a FIFO and a 12,500 px PNG: a reason each, never read or decoded whole; the good photo is placed."
    import os
    from PIL import Image
    good = sorted(str(p) for p in photos.rglob('*.jpg'))[0]
    os.mkfifo(tmp_path / 'pipe.jpg')   # opening it for reading would block for ever
    Image.new('L', (12_500, 12_500)).save(tmp_path / 'huge.png')
    pred = geo.predict(['/dev/zero', str(tmp_path / 'pipe.jpg'), str(tmp_path / 'huge.png'), good])
    assert pred.status.tolist() == ['failed', 'failed', 'failed', 'ok']
    assert pred.error.tolist()[:3] == ['not a regular file', 'not a regular file', 'too many pixels (12500 x 12500)']


def test_embedded_json_cannot_end_or_swallow_the_maps_script(geo, photos, tmp_path):
    pred = geo.predict(sorted(str(p) for p in photos.rglob('*.jpg'))[:2])
    pred.loc[0, 'image'] = '<!--<script></script>.jpg'
    page = write_predictions(pred, geo.areas, tmp_path / 'out')['map'].read_text()
    scripts = re.findall(r'<script>(.*?)</script>', page, flags=re.S)
    assert scripts and not any('<!--' in s or '<script' in s for s in scripts[-2:])   # the data holds no '<'
    assert '\\u003c!--\\u003cscript>' in page


def test_centroids_inside_their_districts(geo):
    c = district_centroids(geo.areas)
    assert list(c.name) == list(geo.areas.name)
    assert all(g.contains(shapely.Point(lo, la)) for g, la, lo in zip(geo.areas.geometry, c.lat, c.lon))
    ring = gpd.GeoDataFrame({'name': ['ring']}, geometry=[shapely.Point(2, 41).buffer(0.01).difference(
        shapely.Point(2, 41).buffer(0.008))], crs=4326)
    r = district_centroids(ring).iloc[0]
    assert ring.geometry[0].contains(shapely.Point(r.lon, r.lat))


def test_geojson_polygons_with_probabilities(geo, photos):
    pred = geo.predict(photos, top_k=2)
    gj = to_geojson(pred, geo.areas)
    g = gpd.GeoDataFrame.from_features(gj['features'], crs=4326)
    assert g.kind.value_counts().to_dict() == {'district': 16, 'photo': 8}
    polys = g[g.kind == 'district']
    assert polys['rank'].tolist() == [1, 2] * 8
    np.testing.assert_allclose(polys.probability.to_numpy()[::2], pred.prob_1, atol=1e-6)
    exact = geo.areas.set_index('name').geometry
    assert all(p.symmetric_difference(exact[d]).area < 0.01 * exact[d].area for p, d in zip(polys.geometry, polys.district))
    pts = g[g.kind == 'photo']
    assert pts.district_1.tolist() == pred.district_1.tolist()
    np.testing.assert_allclose(pts.geometry.y, pred.estimate_lat, atol=1e-6)   # photos sit at their estimates


def _chromium():
    exe = os.environ.get('GEOLOC_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not exe: pytest.skip('chromium is not installed (apt-get install chromium, or set GEOLOC_CHROMIUM)')
    return exe


def _dom(url: str, profile: Path) -> str:
    "The DOM after the page's scripts ran, in headless Chromium that may reach 127.0.0.1 only."
    r = subprocess.run([_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={profile}', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
                        '--virtual-time-budget=3000', '--dump-dom', url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_map_renders_districts_and_markers_offline(geo, photos, tmp_path):
    "The page loads with the tile server unreachable and draws every district and one marker per placed photo."
    pred = geo.predict([photos, tmp_path / 'missing.jpg'], thumbnails=48)
    pred.loc[0, 'image'] = '</script><img src=x onerror=alert(1)>.jpg'       # names from the internet are text, not HTML
    pred.loc[1, 'image'] = '<!--<script>.jpg'                               # would swallow the page's script (issue 16)
    paths = write_predictions(pred, geo.areas, tmp_path / 'out', title='Test map')
    dom = _dom(paths['map'].as_uri(), tmp_path / 'profile')
    assert 'data-ready="1"' in dom
    drawn = lambda cls: len(re.findall(rf'<path[^>]*class="{cls} leaflet-interactive"', dom))  # SVG paths Leaflet drew
    assert drawn('geoloc-district') == len(geo.areas) and f'data-districts="{len(geo.areas)}"' in dom
    assert drawn('geoloc-photo') == 8 and 'data-photos="8"' in dom
    assert len(re.findall(r'<path[^>]*class="geoloc-radius"', dom)) == 8                # one uncertainty circle each
    assert f'8 photo(s) placed in {pred.district_1.nunique()} district(s)' in dom and '1 could not be read' in dom
    opened = _dom(paths['map'].as_uri() + '#photo=0', tmp_path / 'profile2')  # the first row's popup
    assert 'class="geoloc-popup"' in opened and 'data:image/jpeg;base64,' in opened
    assert f'<td>{pred.district_1[0]}</td>' in opened and f'<td>{pred.district_2[0]}</td>' in opened
    assert '&lt;img src=x onerror=alert(1)&gt;' in opened and '<img src="x"' not in opened


def test_cli_writes_every_format_appends_and_fails_loudly(run, photos, tmp_path, serve_folder, capsys):
    """geoloc predict: parquet, CSV, GeoJSON, KML, GeoPackage and map; never overwrites (--append adds); exit 1 when all
    fail. One real process (the console entry point), then `geoloc.cli.main` in this process (no torch import each)."""
    from geoloc.cli import main
    base = serve_folder(photos)
    first = sorted(p.name for p in photos.glob('*.jpg'))[0]
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    out = tmp_path / 'out'
    opts = ['--out', str(out), '--quiet', '--tiles', 'none']
    r = subprocess.run([*GEOLOC, 'predict', str(run), str(photos), f'{base}/{first}', str(tmp_path / 'x.jpg'), '--top-k', '2',
                        *opts], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '9 of 10 photos placed' in r.stdout and '1 failed: 1 file not found' in r.stdout and ' m' in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ['map.html', 'predictions.csv', 'predictions.geojson', 'predictions.gpkg',
                                                     'predictions.kml', 'predictions.parquet']
    csv = pd.read_csv(out / 'predictions.csv')
    assert list(csv.columns) == ['image', 'district_1', 'prob_1', 'district_2', 'prob_2', 'confidence', 'estimate_lat',
                                 'estimate_lon', 'radius_m', 'district_centroid_lat', 'district_centroid_lon', 'exif_lat',
                                 'exif_lon', 'exif_error_km', 'exif_district', 'status', 'error']
    assert csv.district_1[0] == csv.district_1[8]  # the first photo, once from its file and once by URL
    gj = json.loads((out / 'predictions.geojson').read_text())['features']
    assert len(gj) == 10 + 9 * 2 and sum(f['geometry'] is None for f in gj) == 1
    assert len(gpd.read_file(out / 'predictions.kml')) == 9 and len(gpd.read_file(out / 'predictions.gpkg')) == 10
    page = (out / 'map.html').read_text()
    assert 'tile.openstreetmap.org' not in page and 'data:image/jpeg;base64,' in page
    capsys.readouterr()
    assert main(['predict', str(run), str(photos), *opts]) == 1
    err = capsys.readouterr().err
    assert 'already holds predictions' in err and '--append' in err
    more = tmp_path / 'more'; more.mkdir(); shutil.copy(photos / first, more / 'new-one.jpg')
    assert main(['predict', str(run), str(more), '--append', '--min-confidence', '0.99', *opts]) == 0
    csv2 = pd.read_csv(out / 'predictions.csv')
    assert len(csv2) == 11 and csv2.image.iat[-1].endswith('new-one.jpg') and csv2.status.iat[-1] == 'unsure'
    pd.testing.assert_frame_equal(csv2.iloc[:10][csv.columns], csv, check_dtype=False)   # the earlier rows kept
    assert list(csv2.columns[:7]) == ['image', 'district_1', 'prob_1', 'district_2', 'prob_2', 'district_3', 'prob_3']
    (tmp_path / 'page.jpg').write_bytes(b'<html>rate limited</html>')
    capsys.readouterr()
    assert main(['predict', str(run), str(tmp_path / 'page.jpg'), str(tmp_path / 'gone.jpg'), '--out', str(tmp_path / 'none'),
                 '--quiet']) == 1
    assert 'none of the 2 photo(s) could be read' in capsys.readouterr().err
    assert main(['predict', str(tmp_path / 'no-run'), str(photos)]) == 1
    assert 'not found' in capsys.readouterr().err
    assert main(['predict', str(run / 'model.pkl'), str(photos), '--out', str(tmp_path / 'p'), '--quiet']) == 1
    assert '--trust-pickle' in capsys.readouterr().err


def test_model_folder_is_pickle_free_calibrated_and_indexed(run, geo, tmp_path):
    "The run's model/ folder loads alone (copied elsewhere) with its temperature and index; a pickle only when trusted."
    shutil.copytree(run / 'model', tmp_path / 'shared-model')
    alone = Geolocator.load(tmp_path / 'shared-model')
    cfg = json.loads((run / 'model' / 'config.json').read_text())
    assert cfg['architecture'] == 'focalnet_pico_srf' and cfg['pretrained_cfg']['classifier'] == 'head.fc'
    assert alone.temperature == cfg['geoloc']['calibration']['temperature'] == geo.temperature
    assert len(alone.index) == len(geo.index) > 0 and 0 < alone.index.coverage < 1
    s = json.loads((run / 'summary.json').read_text())
    assert s['ece_calibrated'] <= s['ece'] + 1e-9
    with pytest.raises(ValueError, match='a pickle: loading it runs code'): Geolocator.load(run / 'model.pkl')
    trusted = Geolocator.load(run / 'model.pkl', trust_pickle=True)
    assert trusted.index is None and trusted.classes == geo.classes
    v = pd.read_parquet(run / 'predictions.parquet')
    assert {'est_lat', 'est_lon', 'radius_m'} <= set(v.columns) and v.radius_m.gt(0).all()


def test_phone_photos_heic_and_exif_gps(geo, photos, tmp_path):
    "A HEIC from a phone is placed like its JPEG; EXIF GPS is reported, with its district and distance from the estimate."
    src = sorted(photos.rglob('*.jpg'))[0]
    im = Image.open(src)
    c = district_centroids(geo.areas).iloc[0]
    dms = lambda x: (float(int(x)), float(int(x * 60 % 60)), round(x * 3600 % 60, 4))
    ex = Image.Exif(); ex[0x8825] = {1: 'N', 2: dms(c.lat), 3: 'E', 4: dms(c.lon)}
    im.save(tmp_path / 'phone.heic', format='HEIF', quality=95, exif=ex)
    im.save(tmp_path / 'phone.webp', format='WEBP', quality=95)
    pred = geo.predict([src, tmp_path / 'phone.heic', tmp_path / 'phone.webp'])
    assert pred.status.tolist() == ['ok'] * 3 and len(set(pred.district_1)) == 1
    np.testing.assert_allclose(pred.prob_1, pred.prob_1[0], atol=0.05)
    h = pred.iloc[1]
    assert abs(h.exif_lat - c.lat) < 1e-5 and h.exif_district == c['name'] and h.exif_error_km >= 0
    assert pred.exif_lat.isna().tolist() == [True, False, True]
