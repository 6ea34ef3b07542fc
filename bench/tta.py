"""Test-time augmentation on a trained run's validation photos: what `--tta flip` and `--tta crops` gain, and cost.

Measured in one run, same process, same model, same photos (the run's validation split, read from its dataset
folder as `geoloc predict` reads any photo): for each mode, top-1 and top-5 accuracy against the photos' districts,
the ECE of the calibrated top probability, the estimate's median great-circle error and the time per photo; then
each mode against one pass (the baseline, `--tta off`): accuracy gained in points, time as a ratio. A run trained
on the demo's tiny images gains little: the figure that matters is on a real run (FocalNet-T at 224 px).

    python bench/tta.py data/demo/runs/sequence                 # the demo's run (make demo), all its validation photos
    python bench/tta.py RUN --dataset DIR --limit 2000 --device cuda
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geoloc.labeling import read_dataset  # noqa: E402
from geoloc.metrics import expected_calibration_error, haversine_km  # noqa: E402
from geoloc.predict import Geolocator  # noqa: E402


def prob_matrix(p, classes: list) -> np.ndarray:
    "(n, classes) calibrated probabilities from a `predict` table with every class ranked (top_k = all)."
    out = np.zeros((len(p), len(classes)))
    col = {c: i for i, c in enumerate(classes)}
    for r in range(1, len(classes) + 1):
        out[np.arange(len(p)), p[f'district_{r}'].map(col).to_numpy()] = p[f'prob_{r}'].to_numpy(float)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('run', help='a run folder (geoloc train --out)')
    ap.add_argument('--dataset', help="the run's dataset folder (default: the one in RUN/source.json)")
    ap.add_argument('--limit', type=int, default=0, help='at most this many validation photos (0: all)')
    ap.add_argument('--device', default=None)
    ap.add_argument('--bs', type=int, default=None)
    a = ap.parse_args()
    run = Path(a.run)
    dataset = Path(a.dataset or json.loads((run / 'source.json').read_text())['dataset'])
    rows = read_dataset(dataset)[0]
    valid = rows[rows.split == 'valid'].drop_duplicates('id')
    if a.limit: valid = valid.sample(min(a.limit, len(valid)), random_state=0)
    files = [str(dataset / p) for p in valid.path]
    geo = Geolocator.load(run, device=a.device)
    print(f'{geo}\n{len(files):,} validation photos of {dataset}')
    geo.predict(files[:8], bs=a.bs)  # warm-up
    res = {}
    for mode in ('off', 'flip', 'crops'):
        t = time.perf_counter()
        p = geo.predict(files, top_k=len(geo.classes), bs=a.bs, tta=mode)
        sec = time.perf_counter() - t
        truth = valid.district.to_numpy()
        top = np.stack([p[f'district_{i}'].to_numpy() for i in range(1, min(5, len(geo.classes)) + 1)], 1)
        right = top[:, 0] == truth
        gc = haversine_km(p.estimate_lat.to_numpy(float), p.estimate_lon.to_numpy(float), valid.lat.to_numpy(), valid.lon.to_numpy())
        ok = (p.status != 'failed').to_numpy()
        ece = expected_calibration_error(prob_matrix(p[ok], geo.classes), np.array([geo.classes.index(d) for d in truth[ok]]),
                                         from_logits=False)
        res[mode] = dict(top1=right.mean(), top5=(top == truth[:, None]).any(1).mean(), ece=ece,
                         gc=np.nanmedian(gc), ms=1000 * sec / len(files), failed=int((p.status == 'failed').sum()))
    base = res['off']
    for mode, r in res.items():
        vs = '' if mode == 'off' else (f'  vs off: top-1 {100 * (r["top1"] - base["top1"]):+.1f} pts, top-5 '
                                       f'{100 * (r["top5"] - base["top5"]):+.1f} pts, {r["ms"] / base["ms"]:.2f}x the time')
        print(f'tta {mode:5}: top-1 {r["top1"]:.1%}  top-5 {r["top5"]:.1%}  ECE {r["ece"]:.1%}  median error {r["gc"]:.2f} km  '
              f'{r["ms"]:.1f} ms/photo' + (f'  ({r["failed"]} failed)' if r['failed'] else '') + vs)


if __name__ == '__main__':
    main()
