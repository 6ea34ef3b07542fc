"""Benchmark: download 10,000 emulated images at 50 ms latency, verified and resized to 256 px (short side).

The images come from `geoloc.sim` serving from a child process (`process=True`, so that the server and the
downloader do not share a GIL): 8,000 Mapillary thumbnails (1024 px, signed URLs from the emulated Graph API) and
2,000 Flickr photos (640 px), with real photos' sizes and entropy (a 1024 px thumbnail is 150-250 kB; the bench
prints the mean it received). Every response waits `--latency` seconds before it is sent, like a distant CDN.

A real CDN's CPU is not ours, but the stand-in shares this machine's cores with the downloader. So the server first
renders every image once (a first download into a throwaway folder: the "cold server" figure), and the timed run
downloads everything again into a new folder from a server that only sends bytes. The baseline, measured in the
same run on a sample of the same bodies: verifying and resizing by a full decode (what a downloader without DCT
draft decoding does). Target (issue 13): >= 300 images/s.

    .venv/bin/python bench/download.py [--images 10000] [--latency 0.05] [--workers 32]
"""
import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import urllib3
from PIL import Image

from geoloc.sim import MAPILLARY_TOKEN, Emulator, Faults, synthetic_world
from geoloc.sim import synthetic_city
from geoloc.images import download_images


def full_decode_resize(data: bytes, size: int) -> bytes:
    "The baseline's per-image work: decode at full size, resize, re-encode (no draft)."
    im = Image.open(io.BytesIO(data)); im.load(); im = im.convert('RGB')
    w, h = im.size
    im = im.resize((round(w * size / h), size) if w >= h else (size, round(h * size / w)), Image.Resampling.BILINEAR)
    buf = io.BytesIO(); im.save(buf, 'JPEG', quality=90)
    return buf.getvalue()


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
    ap.add_argument('--workers', type=int, default=32)
    ap.add_argument('--size', type=int, default=256)
    a = ap.parse_args()
    n_mly = a.images * 4 // 5
    world = synthetic_world(synthetic_city(), mapillary=n_mly, flickr=a.images // 4, seed=0)
    world.cache_size = a.images + 100   # the child keeps every rendered body: a warm server only sends bytes
    tmp = Path(tempfile.mkdtemp(prefix='geoloc-bench-download-'))
    try:
        with Emulator(world, faults=Faults(latency=a.latency), process=True) as emu:
            ds = records(world, emu, n_mly, a.images - n_mly)
            print(f'{len(ds):,} images ({(ds.source == "mapillary").sum():,} Mapillary 1024 px, '
                  f'{(ds.source == "flickr").sum():,} Flickr 640 px), {a.latency * 1000:.0f} ms latency, '
                  f'{a.workers} workers, resize to {a.size} px; {platform.machine()}, {os.cpu_count()} CPUs')
            server = emu._proc.pid  # the emulator's child process, to measure its CPU time
            emu.reset()
            t = time.perf_counter()
            cold = download_images(ds, tmp / 'cold', size=a.size, workers=a.workers, progress=False)
            dt_cold = time.perf_counter() - t
            stats = emu.stats()
            emu.reset()
            c0, s0, t = _cpu_s(), _cpu_s(server), time.perf_counter()
            out = download_images(ds, tmp / 'warm', size=a.size, workers=a.workers, progress=False)
            dt = time.perf_counter() - t
            c1, s1 = _cpu_s(), _cpu_s(server)
            s = out.attrs['download']
            t2 = time.perf_counter()
            again = download_images(out, tmp / 'warm', size=a.size, workers=a.workers, progress=False)
            dt2 = time.perf_counter() - t2
            http = urllib3.PoolManager()
            sample = [http.request('GET', u).data for u in ds.url.head(200)]
        rate, cold_rate = s['downloaded'] / dt, cold.attrs['download']['downloaded'] / dt_cold
        mb = stats.get('bytes', 0) / 1e6
        print(f"received: {mb:,.0f} MB, {mb * 1e3 / max(len(ds), 1):.0f} kB per body "
              f"(Mapillary 1024 px: {sum(map(len, sample)) / len(sample) / 1e3:.0f} kB on average)")
        print(f"cold server (rendering each image on request): {cold_rate:,.0f} images/s")
        print(f"download: {s['downloaded']:,} images in {dt:.1f} s = {rate:,.0f} images/s "
              f"({s['failed']} failed)")
        n = max(s['downloaded'], 1)
        client, srv = (c1 - c0) / n * 1000, (s1 - s0) / n * 1000
        t = time.process_time()
        for b in sample: full_decode_resize(b, a.size)
        base_ms = (time.process_time() - t) / len(sample) * 1000
        from geoloc.images import image_settings  # noqa: F401  (the module under test, for the record)
        print(f'CPU per image: downloader {client:.2f} ms (fetch, verify, draft-decode, resize, write), server {srv:.2f} ms; '
              f'baseline full decode + resize alone {base_ms:.2f} ms')
        print(f'ceiling with {os.cpu_count()} CPUs for the downloader alone: {os.cpu_count() * 1000 / client:,.0f} '
              f'images/s (load average now {os.getloadavg()[0]:.1f})')
        print(f"resume:   {again.attrs['download']['present']:,} images already present, "
              f"{again.attrs['download']['downloaded']} fetched, in {dt2:.2f} s")
        disk = sum(f.stat().st_size for f in (tmp / 'warm' / 'images').rglob('*.jpg')) / 1e6
        print(f'on disk: {disk:,.0f} MB ({disk * 1e3 / max(s["downloaded"], 1):.0f} KB per image)')
        print(f"ratio to the target of 300 images/s: {rate / 300:.2f}x ({'MET' if rate >= 300 else 'MISSED'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
