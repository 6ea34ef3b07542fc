"""Benchmark: crawl the emulated Barcelona (the paper's 182,130 Mapillary images + ~20% outside) with crawl_images.

The emulator serves the world from a child process (`process=True`, no shared GIL) with 100 ms of latency per
request; the crawl uses 16 workers. Baseline, counted on the same world in the same run: the paper's way,
quartering every full box from the same start boxes (all four quarters searched) plus one metadata request per
image. Targets (issue 4): 100% of the images, 0 duplicates; <= 0.8x the paper's box requests; >= 500x fewer
requests in all; under 60 s.

    .venv/bin/python bench/mapillary.py [--scale 1.0] [--latency 0.1] [--workers 16]
"""
import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from geoloc.sim import MAPILLARY_TOKEN, Emulator, Faults, barcelona_world
from geoloc.mapillary import as_area, cover_boxes, crawl_images, quadtree_requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--scale', type=float, default=1.0, help="the paper's counts times this")
    ap.add_argument('--latency', type=float, default=0.1, help='seconds added to every response')
    ap.add_argument('--workers', type=int, default=16)
    ap.add_argument('--max-bbox-area', type=float, default=0.01)
    a = ap.parse_args()

    t = time.perf_counter()
    world = barcelona_world(scale=a.scale)
    print(f'{world!r}\nbuilt in {time.perf_counter() - t:.1f} s; {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPUs')
    in_city = world.mapillary[world.mapillary['district'].notna()]
    out = Path(tempfile.mkdtemp(prefix='geoloc-bench-mapillary-'))
    try:
        with Emulator(world, faults=Faults(latency=a.latency), process=True,
                      max_bbox_area=a.max_bbox_area) as emu:
            t = time.perf_counter()
            df = crawl_images(world.areas, MAPILLARY_TOKEN, base_url=emu.mapillary_url, out=out,
                              workers=a.workers, max_bbox_area=a.max_bbox_area, progress=False)
            seconds = time.perf_counter() - t
            served = emu.stats()
        s = df.attrs['summary']
    finally: shutil.rmtree(out, ignore_errors=True)

    found = len(set(df['id']) & set(in_city['id']))
    outside = len(set(df['id']) - set(in_city['id']))
    dups = int(df['id'].duplicated().sum())
    starts = cover_boxes(as_area(world.areas), a.max_bbox_area)
    paper = quadtree_requests(starts, lambda b: len(world.mapillary_in(b)))
    paper_all = paper['box_requests'] + len(in_city)
    ours = served['requests']
    print(f'\ncrawl_images: {found:,} of {len(in_city):,} images in the city ({found / len(in_city):.2%}), '
          f'{outside} from outside, {dups} duplicates')
    print(f"  {ours} requests served ({s['boxes']} box searches, {s['probes']} of them probes, {s['full']} full, "
          f"depth {s['depth']}, {s['retries']} retries) in {seconds:.1f} s, {a.latency * 1000:.0f} ms latency, "
          f'{a.workers} workers')
    print(f"paper's way: {paper['box_requests']} box searches ({paper['full']} full, depth {paper['depth']}) "
          f'+ {len(in_city):,} metadata requests = {paper_all:,} requests')
    print(f"\nbox searches: {s['boxes'] / paper['box_requests']:.2f}x the paper's; "
          f'requests in all: {paper_all / ours:,.0f}x fewer')
    ok = [('100% of the images, 0 duplicates, none from outside', found == len(in_city) and dups == 0 and outside == 0),
          ("<= 0.8x the paper's box requests", s['boxes'] <= 0.8 * paper['box_requests']),
          ('>= 500x fewer requests in all', paper_all / ours >= 500),
          ('under 60 s', seconds < 60)]
    print('targets: ' + '; '.join(f"{k}: {'MET' if v else 'MISSED'}" for k, v in ok))


if __name__ == '__main__':
    main()
