"""Benchmark: crawl an emulated Barcelona with about 25,000 geotagged Flickr photos in the city's box.

The world (`geoloc.emulator`) is Barcelona's districts with photo counts skewed towards Ciutat Vella and Eixample,
so that several single searches match far more than 4000 photos (the "barcelona" keyword, the district keywords of
the two busiest districts, the whole box). It is served from a child process with 100 ms latency per request.

Baseline, measured in the same run: the paper's crawl (`keywords=paper_keywords(...)`: one text+tags search per
district name plus "barcelona", each stopped at Flickr's 4000 cap). Compared with it: area mode (`keywords=None`),
which should find every geotagged photo inside the city exactly once.
Targets (issue 5): area mode recovers 100% with 0 duplicates; paper mode <= 4000 records per keyword;
records served per unique photo <= 1.3.

    .venv/bin/python bench/flickr.py [--in-box 25000] [--latency 0.1] [--workers 4]
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from geoloc.sim import BCN_FLICKR, FLICKR_KEY, Emulator, Faults, barcelona_world
from geoloc.flickr import CAP, crawl_photos, paper_keywords
from geoloc.geojson import city_boundary, load_areas

ROOT = Path(__file__).resolve().parents[1]
# in-city photos per district before scaling: the two busiest districts far above the paper's counts
SKEW = {**BCN_FLICKR, 'Ciutat Vella': 9_000, 'Eixample': 9_000, 'Sants-Montjuïc': 1_500, 'Gràcia': 1_000}


def bcn_districts() -> Path:
    for d in (Path(os.environ.get('GEOLOC_SHARED', ROOT.parent / 'shared')) / 'data' / 'bcn', ROOT / 'data' / 'fixtures' / 'bcn'):
        if (d / 'districtes.geojson').exists(): return d / 'districtes.geojson'
    raise SystemExit('no districtes.geojson in ../shared/data/bcn or data/fixtures/bcn')


def world_with(areas, in_box: int):
    "A Barcelona world whose city box holds about `in_box` geotagged photos (one rescale after a first try)."
    def build(scale):
        w = barcelona_world(areas, flickr_counts={k: int(round(v * scale)) for k, v in SKEW.items()},
                            mapillary_counts={'Ciutat Vella': 50})
        f = w.flickr[w.flickr['lat'].notna()]
        x0, y0, x1, y1 = city_boundary(areas).bounds
        return w, int((f['lon'].between(x0, x1) & f['lat'].between(y0, y1)).sum())
    w, n = build(1.0)
    return build(in_box / n) if abs(n - in_box) > 0.01 * in_box else (w, n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--in-box', type=int, default=25_000)
    ap.add_argument('--latency', type=float, default=0.1)
    ap.add_argument('--workers', type=int, default=4)
    a = ap.parse_args()

    areas = load_areas(bcn_districts())
    t = time.perf_counter()
    world, in_box = world_with(areas, a.in_box)
    city = city_boundary(areas)
    f = world.flickr[world.flickr['lat'].notna()]
    truth = set(f.loc[shapely.intersects_xy(city, f['lon'], f['lat']), 'id'])
    print(f'{world!r}: {in_box:,} geotagged photos in the box, {len(truth):,} inside the city '
          f'(built in {time.perf_counter() - t:.1f} s); latency {a.latency * 1000:.0f} ms, {a.workers} workers; '
          f'{platform.machine()}, {os.cpu_count()} CPUs')

    tmp = Path(tempfile.mkdtemp(prefix='geoloc-bench-flickr-'))
    with Emulator(world, faults=Faults(latency=a.latency), process=True) as emu:
        runs = {}
        for name, kw in [('paper', paper_keywords(areas, 'Barcelona')), ('area', None)]:
            emu.reset()
            df = crawl_photos(areas, FLICKR_KEY, keywords=kw, base_url=emu.flickr_url, out=tmp / name,
                              workers=a.workers, calls_per_hour=None, progress=False)
            ms = pd.DataFrame(emu.log)['ms'].mean()  # the emulator's own time per answer, latency included
            runs[name] = (df, df.attrs['summary'], emu.stats()['requests'], ms)

    paper, sp, paper_server, paper_ms = runs['paper']
    area, sa, area_server, area_ms = runs['area']
    q = pd.DataFrame(sp['queries']).set_index('query')
    print('\npaper mode (baseline): records per keyword (total = what Flickr says the search matches)')
    print(q.T.to_string())
    paper_city = set(paper['id']) & truth
    got = set(area['id'])
    rows = {
        'photos inside the city found': (f'{len(paper_city):,} ({100 * len(paper_city) / len(truth):.1f}%)',
                                         f'{len(got & truth):,} ({100 * len(got & truth) / len(truth):.2f}%)'),
        'records returned': (f"{len(paper):,}", f"{len(area):,}"),
        'duplicate records': (f"{len(paper) - paper['id'].nunique():,} (kept, one per keyword)",
                              f"{len(area) - area['id'].nunique():,}"),
        'records not inside the city': (f"{len(set(paper['id']) - truth):,} photos (kept, as in the paper)",
                                        f'{len(got - truth):,}'),
        'most records of one search': (f"{q['records'].max():,} (cap {CAP})", '-'),
        'requests (client / server)': (f"{sp['requests']} / {paper_server}", f"{sa['requests']} / {area_server}"),
        'seconds': (f"{sp['seconds']:.1f}", f"{sa['seconds']:.1f}"),
        'emulator ms per answer (mean)': (f'{paper_ms:.0f}', f'{area_ms:.0f}'),
        'seconds if answers took only the latency': (f"{sp['requests'] * a.latency / a.workers:.1f}",
                                                     f"{sa['requests'] * a.latency / a.workers:.1f}"),
        'records served / unique photo': (f"{sp['served_per_unique']:.3f}", f"{sa['served_per_unique']:.3f}"),
        'at 3600 calls/hour (one key)': (f"{sp['requests'] / 60:.1f} min", f"{sa['requests'] / 60:.1f} min"),
    }
    print('\n' + pd.DataFrame(rows, index=['paper mode (baseline)', 'area mode']).T.to_string())
    print(f"\narea mode finds {len(got & truth) / max(1, len(paper_city)):.2f}x the paper crawl's photos inside the city; "
          f"search tree depth {sa['depth']}, {sa['tasks']} tasks")
    ok = (got == truth and area['id'].is_unique and (q['records'] <= CAP).all() and sa['served_per_unique'] <= 1.3)
    print('targets met' if ok else 'TARGETS NOT MET')
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
