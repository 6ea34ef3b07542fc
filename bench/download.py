"""Benchmark: download 10,000 emulated images at 50 ms latency, verified and resized to 256 px (short side).

The images come from `geoloc.emulator` serving from a child process (`process=True`, so that the server and the
downloader do not share a GIL): 8,000 Mapillary thumbnails (1024 px, signed URLs from the emulated Graph API) and
2,000 Flickr photos (640 px). Every response waits `--latency` seconds before it is sent, like a distant CDN.
Target (issue 6): >= 300 images/s. A second run over the same folder measures the resume (nothing to fetch).

    .venv/bin/python bench/download.py [--images 10000] [--latency 0.05] [--workers 64]
"""
import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import urllib3

from geoloc.sim import MAPILLARY_TOKEN, Emulator, Faults, synthetic_world
from geoloc.sim import synthetic_city
from geoloc.images import download_images


def records(world, emu, n_mly, n_flickr, batch=200):
    "Crawl-like records: Mapillary thumbnails through the Graph API, Flickr static URLs."
    http, rows = urllib3.PoolManager(), []
    ids = world.mapillary.id.head(n_mly).tolist()
    for i in range(0, len(ids), batch):
        r = http.request('GET', f"{emu.mapillary_url}/images?image_ids={','.join(ids[i:i + batch])}&fields=id,thumb_1024_url",
                         headers={'Authorization': f'OAuth {MAPILLARY_TOKEN}'})
        rows += [{'id': d['id'], 'source': 'mapillary', 'url': d['thumb_1024_url']} for d in json.loads(r.data)['data']]
    fl = world.flickr.dropna(subset=['lat']).head(n_flickr)
    base = emu.flickr_url.rsplit('/services', 1)[0]
    fl = pd.DataFrame({'id': fl.id, 'source': 'flickr',
                       'url': base + '/static/' + fl.server + '/' + fl.id + '_' + fl.secret + '_z.jpg'})
    return pd.concat([pd.DataFrame(rows), fl], ignore_index=True)


def _cpu_s(pid=None) -> float:
    "CPU seconds (user + system) used so far by process `pid` (default: this one), from /proc."
    if pid is None:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    f = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--images', type=int, default=10_000)
    ap.add_argument('--latency', type=float, default=0.05)
    ap.add_argument('--workers', type=int, default=64)
    ap.add_argument('--size', type=int, default=256)
    a = ap.parse_args()
    n_mly = a.images * 4 // 5
    world = synthetic_world(synthetic_city(), mapillary=n_mly, flickr=a.images // 4, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix='geoloc-bench-download-'))
    try:
        with Emulator(world, faults=Faults(latency=a.latency), process=True) as emu:
            ds = records(world, emu, n_mly, a.images - n_mly)
            emu.reset()
            print(f'{len(ds):,} images ({(ds.source == "mapillary").sum():,} Mapillary 1024 px, '
                  f'{(ds.source == "flickr").sum():,} Flickr 640 px), {a.latency * 1000:.0f} ms latency, '
                  f'{a.workers} workers, resize to {a.size} px; {platform.machine()}, {os.cpu_count()} CPUs')
            server = emu._proc.pid  # the emulator's child process, to measure its CPU time
            c0, s0, t = _cpu_s(), _cpu_s(server), time.perf_counter()
            out = download_images(ds, tmp, size=a.size, workers=a.workers, progress=False)
            dt = time.perf_counter() - t
            c1, s1 = _cpu_s(), _cpu_s(server)
            s = out.attrs['download']
            stats = emu.stats()
            t2 = time.perf_counter()
            again = download_images(out, tmp, size=a.size, workers=a.workers, progress=False)
            dt2 = time.perf_counter() - t2
        rate = s['downloaded'] / dt
        mb = stats.get('bytes', 0) / 1e6
        print(f"download: {s['downloaded']:,} images in {dt:.1f} s = {rate:,.0f} images/s "
              f"({mb:,.0f} MB received, {s['failed']} failed, {stats.get('requests', 0):,} requests)")
        n = max(s['downloaded'], 1)
        client, srv = (c1 - c0) / n * 1000, (s1 - s0) / n * 1000
        print(f'CPU per image: downloader {client:.2f} ms, emulator {srv:.2f} ms; with {os.cpu_count()} CPUs all to '
              f'ourselves the ceiling would be {os.cpu_count() * 1000 / (client + srv):,.0f} images/s '
              f'(load average now {os.getloadavg()[0]:.1f})')
        print(f"resume:   {again.attrs['download']['present']:,} images already present, "
              f"{again.attrs['download']['downloaded']} fetched, in {dt2:.2f} s")
        disk = sum(f.stat().st_size for f in (tmp / 'images').rglob('*.jpg')) / 1e6
        print(f'on disk: {disk:,.0f} MB ({disk * 1e3 / max(s["downloaded"], 1):.0f} KB per image)')
        print(f"target >= 300 images/s: {'MET' if rate >= 300 else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
