"""Latency and throughput of `geoloc serve` against a running server on this machine.

Measured in one run, same process, same model, same photos (1024 x 768 JPEG street frames of the stand-ins, with a
real photo's size and entropy, ~150-250 kB, as phones and social media deliver them):
  1. latency: one photo per request, one client, `--requests` requests: p50 and p99 (target: p50 < 1 s on 2 CPU cores
     with FocalNet-T);
  2. throughput: 8 concurrent clients, one photo per request, with micro-batching on and off (two servers, one app
     each): photos/s and the ratio (target: batching >= 1.5x unbatched under 8 clients);
  on a GPU, also the rate of `Geolocator.predict` in one batch call over the same photos, the ceiling a server can
  approach.
The model defaults to an untrained FocalNet-T in a model folder made here (serving speed does not depend on the
weights); `--run` serves a real run instead (the demo's: data/demo/runs/sequence).

    python bench/serve.py                       # FocalNet-T, 2 x 48 requests
    python bench/serve.py --run data/demo/runs/sequence --requests 100
"""
import argparse
import io
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import geoloc.train  # noqa: E402,F401 (registers focalnet_pico_srf)
from geoloc.geojson import area_centroids  # noqa: E402
from geoloc.predict import Geolocator  # noqa: E402
from geoloc.retrieval import RetrievalIndex  # noqa: E402
from geoloc.serve import create_app  # noqa: E402
from geoloc.sim import jpeg_photo, synthetic_city, synthetic_world  # noqa: E402
from geoloc.weights import save_model  # noqa: E402


def model_folder(dest: Path, arch: str, size: int, resize: int, indexed: int) -> Path:
    import timm
    areas = synthetic_city(10, seed=0)
    model = timm.create_model(arch, num_classes=len(areas))
    save_model(dest / 'model', model, arch=arch, classes=list(areas.name), areas=areas.to_json(),
               transform=dict(size=size, resize=resize, squash=False, interpolation='bicubic',
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
               extra={'calibration': {'temperature': 1.0}})
    c, rng = area_centroids(areas), np.random.default_rng(0)
    lab = rng.integers(0, len(areas), indexed)
    RetrievalIndex(torch.randn(indexed, model.num_features).half(), c.lat.to_numpy()[lab] + rng.normal(0, 2e-3, indexed),
                   c.lon.to_numpy()[lab] + rng.normal(0, 2e-3, indexed), lab, radius_scale=1.5,
                   coverage=0.8).save(dest / 'model' / 'index.safetensors')
    return dest


def photos(n: int) -> list:
    world = synthetic_world(synthetic_city(10, seed=0), mapillary=max(n, 16), flickr=0, seed=0)
    return [world.render('mapillary', i, size=1024) for i in world.mapillary.id.to_numpy()[:n]]


def start(app):
    import uvicorn
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='error'))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started: time.sleep(0.05)
    return server, f'http://127.0.0.1:{port}'


def post(client, url, data):
    r = client.post(f'{url}/api/predict', files=[('files', ('photo.jpg', data, 'image/jpeg'))])
    assert r.status_code == 200 and r.json()['results'][0]['error'] is None, r.text[:300]


def latencies(url, imgs, n) -> np.ndarray:
    import httpx
    out = []
    with httpx.Client(timeout=120) as c:
        post(c, url, imgs[0])  # warm-up
        for i in range(n):
            t = time.perf_counter(); post(c, url, imgs[i % len(imgs)]); out.append(time.perf_counter() - t)
    return np.array(out)


def throughput(url, imgs, n, clients=8) -> float:
    import httpx
    cs = [httpx.Client(timeout=300) for _ in range(clients)]
    post(cs[0], url, imgs[0])
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(lambda i: post(cs[i % clients], url, imgs[i % len(imgs)]), range(n)))
    rate = n / (time.perf_counter() - t)
    for c in cs: c.close()
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', default=None, help='a run folder to serve (default: an untrained FocalNet-T made here)')
    ap.add_argument('--arch', default='focalnet_tiny_srf')
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--resize', type=int, default=256)
    ap.add_argument('--requests', type=int, default=48, help='requests per measurement')
    ap.add_argument('--indexed', type=int, default=20_000, help='photos in the made-up retrieval index')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix='geoloc-bench-serve-') as tmp:
        run = Path(a.run) if a.run else model_folder(Path(tmp) / 'city', a.arch, a.size, a.resize, a.indexed)
        imgs = photos(16)
        kb = np.mean([len(b) for b in imgs]) / 1e3
        on_srv, on = start(create_app([run], micro_batch=True, wait_ms=5))
        off_srv, off = start(create_app([run], micro_batch=False))
        geo = next(iter(on_srv.config.app.state.geos.values()))
        print(f'{geo}; {len(imgs)} distinct 1024x768 JPEGs ({kb:.0f} kB on average); {os.cpu_count()} CPUs, '
              f'torch threads {torch.get_num_threads()}')
        lat = latencies(on, imgs, a.requests)
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        print(f'latency    : p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (one photo per request, one client, '
              f'{a.requests} requests): target p50 < 1 s: {"met" if p50 < 1 else "NOT met"}')
        rate_off1 = throughput(off, imgs, a.requests)
        rate_on = throughput(on, imgs, a.requests)
        rate_off2 = throughput(off, imgs, a.requests)     # before and after: a shared machine's load drifts
        rate_off = (rate_off1 + rate_off2) / 2
        print(f'throughput : 8 clients, {a.requests} requests: batched {rate_on:.2f} photos/s, unbatched {rate_off:.2f} '
              f'photos/s (mean of before and after): {rate_on / rate_off:.2f}x, target >= 1.5x: '
              f'{"met" if rate_on / rate_off >= 1.5 else "NOT met"}')
        if geo.cuda:
            t = time.perf_counter(); geo.predict_data([(f'{i}.jpg', imgs[i % len(imgs)]) for i in range(2048)])
            print(f'batch rate : Geolocator.predict_data over 2048 photos: {2048 / (time.perf_counter() - t):.0f} photos/s')
        else:
            print('GPU        : no GPU here: throughput against geoloc predict\'s batch rate on a GPU is unmeasured')
        on_srv.should_exit = off_srv.should_exit = True


if __name__ == '__main__':
    main()
