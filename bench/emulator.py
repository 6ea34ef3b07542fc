"""Benchmark of geoloc.emulator: Barcelona preset start-up, bbox search latency, thumbnail serving rate.

Targets (issue 3): a Barcelona-size world starts in seconds; a bbox search answers in under 20 ms; the downloader
(issue 6) needs >= 300 thumbnails (1024 px) per second from it, so the server's own rate is measured here with a
client that only reads the bytes (and, separately, with the client decoding and resizing them to 256 px).

    .venv/bin/python bench/emulator.py [--n 3000] [--threads 4]
"""
import argparse
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import urllib3
from PIL import Image

from geoloc.sim import MAPILLARY_TOKEN, Emulator, barcelona_world


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=3000, help='thumbnails to fetch per run')
    ap.add_argument('--threads', type=int, default=4, help='client threads')
    a = ap.parse_args()

    t = time.perf_counter()
    world = barcelona_world()
    t_world = time.perf_counter() - t
    print(f'world: {world!r}\n  built in {t_world:.2f} s (target: seconds)')

    t = time.perf_counter()
    with Emulator(world, process=True) as emu:
        t_emu = time.perf_counter() - t
        print(f'emulator child process ready in {t_emu:.2f} s')
        http = urllib3.PoolManager(maxsize=a.threads * 2, headers={'Authorization': f'OAuth {MAPILLARY_TOKEN}'})
        rng = np.random.default_rng(0)
        x0, y0, x1, y1 = world.areas.total_bounds
        rt = []
        for _ in range(200):
            h = rng.uniform(0.003, 0.045)
            cx, cy = rng.uniform(x0 + 0.03, x1 - 0.03), rng.uniform(y0 + 0.03, y1 - 0.03)
            t = time.perf_counter()
            r = http.request('GET', f'{emu.mapillary_url}/images?bbox={cx - h},{cy - h},{cx + h},{cy + h}'
                             '&fields=id,computed_geometry,captured_at,sequence,thumb_1024_url')
            json.loads(r.data)
            rt.append((time.perf_counter() - t) * 1000)
        srv = np.array([x['ms'] for x in emu.log])
        print(f'bbox search, 200 random boxes: server median {np.median(srv):.1f} ms, p95 {np.percentile(srv, 95):.1f} ms;'
              f' client round trip median {np.median(rt):.1f} ms, p95 {np.percentile(rt, 95):.1f} ms (target < 20 ms)')

        ids = world.mapillary['id'].sample(2 * a.n, random_state=0).tolist()
        urls = []
        for i in range(0, len(ids), 200):
            r = http.request('GET', f"{emu.mapillary_url}/images?image_ids={','.join(ids[i:i + 200])}&fields=thumb_1024_url")
            urls += [d['thumb_1024_url'] for d in json.loads(r.data)['data']]

        def fetch(u): return len(http.request('GET', u).data)

        def fetch_resize(u):
            im = Image.open(io.BytesIO(http.request('GET', u).data))
            im.draft('RGB', (341, 256))
            return im.convert('RGB').resize((256, 256), Image.BILINEAR).size

        for name, fn, part in [('bytes only', fetch, urls[:a.n]), ('decode + resize to 256', fetch_resize, urls[a.n:])]:
            t = time.perf_counter()
            with ThreadPoolExecutor(a.threads) as ex: list(ex.map(fn, part))
            dt = time.perf_counter() - t
            print(f'thumb_1024 over HTTP, {len(part)} distinct images, {a.threads} client threads, {name}: '
                  f'{len(part) / dt:,.0f} images/s (downloader target >= 300)')


if __name__ == '__main__':
    main()
