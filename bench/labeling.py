"""Benchmark: label 1,000,000 random points in Barcelona's box against its districts.

Baseline, timed in the same run: the paper's loop, for each point `shape(polygon).contains(Point)` over every
district (the GeoJSON features as the authors read them), on 5,000 of the same points; it stops at the first
district that contains the point, which flatters it. A second baseline builds the shapes once before the loop.
Targets (issue 6): >= 2,000,000 points/s and >= 100x the paper's loop.

    .venv/bin/python bench/labeling.py [--points 1000000] [--loop-points 5000]
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from shapely.geometry import Point, shape

from geoloc.geojson import load_areas
from geoloc.labeling import label_points

ROOT = Path(__file__).resolve().parents[1]


def bcn_districts() -> Path:
    for d in (Path(os.environ.get('GEOLOC_SHARED', ROOT.parent / 'shared')) / 'data' / 'bcn', ROOT / 'data' / 'fixtures' / 'bcn'):
        if (d / 'districtes.geojson').exists(): return d / 'districtes.geojson'
    raise SystemExit('no districtes.geojson in ../shared/data/bcn or data/fixtures/bcn')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--points', type=int, default=1_000_000)
    ap.add_argument('--loop-points', type=int, default=5_000)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()

    path = bcn_districts()
    feats = json.loads(path.read_text())['features']
    areas = load_areas(path)
    x0, y0, x1, y1 = areas.total_bounds
    rng = np.random.default_rng(0)
    pts = pd.DataFrame({'lat': rng.uniform(y0, y1, a.points), 'lon': rng.uniform(x0, x1, a.points)})
    vertices = sum(len(json.dumps(f['geometry'])) for f in feats)
    print(f'{path} ({len(feats)} districts, {vertices / 1e6:.1f} MB of coordinates); '
          f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs')

    label_points(pts.head(1000), areas)  # warm-up
    best = min(_timed(lambda: label_points(pts, areas)) for _ in range(a.repeats))
    labels = label_points(pts, areas).district
    rate = a.points / best
    print(f'label_points: {a.points:,} points in {best:.3f} s = {rate:,.0f} points/s '
          f'({labels.notna().mean():.1%} inside a district)')

    sub = pts.head(a.loop_points)
    def paper_loop(build_each_time=True):
        shapes = None if build_each_time else [shape(f['geometry']) for f in feats]
        out = []
        for la, lo in zip(sub.lat, sub.lon):
            p, found = Point(lo, la), None
            for i, f in enumerate(feats):
                if (shape(f['geometry']) if build_each_time else shapes[i]).contains(p):
                    found = areas.name[i]; break
            out.append(found)
        return out
    t_loop = _timed(paper_loop)
    loop_rate = a.loop_points / t_loop
    t_pre = _timed(lambda: paper_loop(False))
    pre_rate = a.loop_points / t_pre
    agree = np.mean([a_ == b_ or (a_ is None and not isinstance(b_, str))
                     for a_, b_ in zip(paper_loop(False), labels.head(a.loop_points))])
    print(f"paper's loop (shape() per test): {a.loop_points:,} points in {t_loop:.2f} s = {loop_rate:,.0f} points/s")
    print(f"loop with shapes built once:     {a.loop_points:,} points in {t_pre:.2f} s = {pre_rate:,.0f} points/s")
    print(f'labels agree with the loop on {agree:.2%} of the points (random points never fall exactly on a border, '
          "where the loop's open `contains` would give none)")
    print(f'\nspeed-up: {rate / loop_rate:,.0f}x the paper\'s loop, {rate / pre_rate:,.0f}x the prebuilt loop')
    print(f"targets: >= 2,000,000 points/s: {'MET' if rate >= 2e6 else 'MISSED'}; "
          f">= 100x the paper's loop: {'MET' if rate / loop_rate >= 100 else 'MISSED'}")


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == '__main__':
    main()
