"""One bounded GPU validation run for geoloc (train + predict) on one H200. Prints one summary table.

Stages (each skipped, and said so, when the time budget would be exceeded):
  data      synthetic JPEG datasets: 'tex' (emulator street frames + texture, ~30 kB at 341x256 like real photos),
            'emu' (the bench's own emulator frames, ~12 kB); unique files hard-linked to make long epochs
  decode    odd JPEGs (CMYK, grayscale, progressive, 4:4:4/4:2:2, EXIF-rotated, 4000x3000, truncated) through
            geoloc.data.decode (the training path) and Geolocator._gpu_images (the predict path) vs PIL (upright);
            one odd file in a batch (does it cost only itself?); host cost of ImageBatch.imgs
  race      (a) nvJPEG writing into a block the caller's stream still reads, through geoloc.data.decode (which
            synchronises the stream first); (b) the same through geoloc's prefetch thread: validation batches with
            prefetch vs without, the side stream made to lag by a GPU-side sleep
  train     model-only img/s (fast learner, synthetic tensors) -> fast preset end to end (as is; without prefetch;
            on the bench's small 'emu' set) -> paper preset model-only and end to end; step-time median and the
            stall at each epoch start
  predict   Geolocator bf16 compiled: model-only, end to end on files (a whole number of batches), then one
            partial batch (recompilation?); eager bf16 for comparison; with a 200,000-photo retrieval index
            (issue 16: under 20% added) and with test-time augmentation (flip, crops); a trained run's model/
            folder loaded the pickle-free way (Geolocator.load) on the GPU, its answers against the CPU's

Adapted from ../shared/tools/gpu-check (written against commit 7f45c7d) to the package as it stands: decoding
moved to geoloc.data (decode, decode_cpu, read_bytes; it now reads ImageBatch.imgs once and synchronises before
nvJPEG, so the old what-if rows are gone), toy_dataset and synthetic_city to geoloc.sim, read_dataset to
geoloc.labeling, decode_image to geoloc.photos.
The measurement classes are bench/train.py's (Throughput, SyntheticLoader) and bench/predict.py's model_only.
Numbers: images/s, medians where repeated; a single run, so +-5% is noise.

    python3 tools/gpu-check/gpu_check.py [--budget 270] [--out DIR]          # on the GPU machine
    python3 tools/gpu-check/gpu_check.py --dry                              # CPU, tiny, to test the script itself
    python3 tools/gpu-check/gpu_check.py --summary DIR/gpu_check.json --nb DIR/nb04.txt DIR/nb06.txt
"""
import argparse, importlib.util, io, json, math, os, shutil, sys, tempfile, time, traceback, warnings
from pathlib import Path

T0 = time.time()
REPO = Path(os.environ.get('GEOLOC_REPO') or next(d for d in Path(__file__).resolve().parents if (d / 'pyproject.toml').exists()))
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings('ignore')
RES, NOTES = [], []  # rows: (stage, metric, value, reference/target, verdict)


def row(stage, metric, value, ref='', verdict=''):
    RES.append((stage, metric, value, ref, verdict)); print(f'[{time.time() - T0:6.0f}s] {stage:8} {metric}: {value}  {ref} {verdict}', flush=True)


def fmt(x, nd=0): return f'{x:,.{nd}f}' if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def print_table(rows, notes):
    "One compact table (only the last 12,000 characters of output may come back): long cells are cut."
    cap = (8, 54, 58, 32, 46)
    cut = lambda v, n: (str(v) if len(str(v)) <= n else str(v)[:n - 1] + '~')
    hdr = ('stage', 'metric', 'value', 'reference / target', 'verdict')
    rows = [tuple(cut(v, cap[i]) for i, v in enumerate(r)) for r in rows]
    w = [max(len(r[i]) for r in rows + [hdr]) for i in range(5)]
    line = ' '.join(h.ljust(w[i]) for i, h in enumerate(hdr))
    print('\nSUMMARY (one run, one GPU; timings +-5%; full text in gpu_check.json)\n' + line + '\n' + '-' * len(line))
    for r in rows: print(' '.join(v.ljust(w[i]) for i, v in enumerate(r)).rstrip())
    for n in notes: print('note:', n)


if '--summary' in sys.argv:  # merge the JSON of the run with the notebook logs and print the one table
    ap = argparse.ArgumentParser(); ap.add_argument('--summary'); ap.add_argument('--nb', nargs='*', default=[])
    a = ap.parse_args()
    d = json.loads(Path(a.summary).read_text()) if Path(a.summary).exists() else {'rows': [], 'notes': ['gpu_check.py wrote no JSON (killed?)']}
    rows, notes = [tuple(r) for r in d['rows']], d['notes']
    for f in a.nb:
        p = Path(f); txt = p.read_text(errors='replace') if p.exists() else ''
        last = [l for l in txt.splitlines() if l.startswith(('PASS', 'FAIL', 'TIMEOUT', 'SKIP'))]
        rows.append(('notebook', p.stem, last[-1][:90] if last else 'no result (see log)', '#| cuda cells run', 'ok' if last and last[-1].startswith('PASS') else 'CHECK'))
    print_table(rows, notes); sys.exit(0)

ap = argparse.ArgumentParser()
ap.add_argument('--budget', type=float, default=float(os.environ.get('BUDGET', 300)), help='seconds for all stages')
ap.add_argument('--out', default=os.environ.get('OUT') or tempfile.mkdtemp(prefix='gpucheck-'))
ap.add_argument('--dry', action='store_true', help='CPU, tiny model and sizes: tests this script, numbers meaningless')
ap.add_argument('--workdir', default=None)
a = ap.parse_args()
OUT = Path(a.out); OUT.mkdir(parents=True, exist_ok=True)
def left(): return a.budget - (time.time() - T0)


def save():
    (OUT / 'gpu_check.json').write_text(json.dumps({'rows': RES, 'notes': NOTES}, indent=1, default=str))


STAGES = []
def stage(name, est):
    "Register a stage; `run_stages` runs each if `est` seconds are left, recording an error row instead of stopping."
    def deco(fn): STAGES.append((name, est, fn)); return fn
    return deco


def run_stages():
    for name, est, fn in STAGES:
        if left() < est:
            row(name, fn.__name__, f'SKIPPED: {left():.0f} s left, needs ~{est} s', '', 'not run'); save(); continue
        try: fn()
        except Exception as e:
            row(name, fn.__name__, f'ERROR {type(e).__name__}: {str(e)[:150]}', '', 'CHECK')
            traceback.print_exc()
        save()


import numpy as np
import pandas as pd
import torch
from PIL import Image
import geoloc.data as D
from geoloc.data import ImageBatch, BatchTransform, read_bytes
from geoloc.labeling import read_dataset
from geoloc.sim import synthetic_city, toy_dataset
from geoloc.train import TrainConfig, create_model, dataloaders, focalnet_learner
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders


def load_bench(name):
    spec = importlib.util.spec_from_file_location(f'bench_{name}', REPO / 'bench' / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m


bt, bp = load_bench('train'), load_bench('predict')
CUDA = torch.cuda.is_available() and not a.dry
dev = torch.device('cuda' if CUDA else 'cpu')
ARCH, SIZE, RESIZE, BS = ('focalnet_pico_srf', 64, 80, 32) if a.dry else ('focalnet_tiny_srf', 224, 256, 256)
NCPU = os.cpu_count() or 1
WORKERS = min(16, NCPU)
UNIQUE, COPIES, EMU = (256, 2, 256) if a.dry else (2048, 8, 4096)  # tex: 16,384 files, 60 batches of 256 per epoch; emu: bench/train.py's 4096
WORK = Path(a.workdir or tempfile.mkdtemp(prefix='gpucheck-data-'))
os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR', str(WORK / 'inductor-cache'))

import timm, torchvision, fastai
row('env', 'torch / torchvision', f'{torch.__version__} / {torchvision.__version__}')
row('env', 'timm / fastai / python', f'{timm.__version__} / {fastai.__version__} / {sys.version.split()[0]}')
row('env', 'device', (torch.cuda.get_device_name(0) + f', {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB' if CUDA
                      else 'CPU (dry run)') + f'; {NCPU} CPUs; budget {a.budget:.0f} s')
if not CUDA and not a.dry: NOTES.append('no CUDA device: only --dry makes sense here')


# ---------------------------------------------------------------- data
def replicate(ds: Path, copies: int):
    "Hard-link every image `copies` times under new ids: long epochs without writing more JPEGs."
    df = pd.read_parquet(ds / 'dataset.parquet')
    parts = [df]
    for k in range(1, copies):
        c = df.copy(); c['id'] = c['id'] + f'_{k}'
        c['path'] = [p[:-4] + f'_{k}.jpg' for p in df.path]
        for src, dst in zip(df.path, c.path): os.link(ds / src, ds / dst)
        parts.append(c)
    pd.concat(parts, ignore_index=True).to_parquet(ds / 'dataset.parquet', index=False)


def texture(ds: Path, target_kb=30.0):
    "Add multi-scale noise to each image so that the mean JPEG size is ~target_kb (real 341x256 photos: ~30 kB)."
    df = pd.read_parquet(ds / 'dataset.parquet'); rng = np.random.default_rng(0)
    def noisy(p, sigma):
        x = np.asarray(Image.open(p).convert('RGB')).astype(np.float32)
        h, w = x.shape[:2]
        n = sum(np.kron(rng.normal(0, sigma, (h // s + 1, w // s + 1, 1)), np.ones((s, s, 1), np.float32))[:h, :w] for s in (1, 2, 4))
        b = io.BytesIO(); Image.fromarray((x + n).clip(0, 255).astype(np.uint8)).save(b, 'JPEG', quality=90); return b.getvalue()
    probe = [ds / p for p in df.path[:24]]
    sigma = min((2, 3, 4, 6, 8, 11), key=lambda s: abs(np.mean([len(noisy(p, s)) for p in probe]) / 1e3 - target_kb))
    for p in df.path: (ds / p).write_bytes(noisy(ds / p, sigma))
    return sigma


DATA = {}
@stage('data', 20)
def build_datasets():
    t = time.perf_counter()
    for name, per_class, copies in (('tex', UNIQUE // 10, COPIES), ('emu', EMU // 10, 1)):
        d = WORK / name
        if not (d / 'dataset.parquet').exists():
            toy_dataset(d, n_classes=10, per_class=per_class, size=RESIZE, valid_pct=0.05, seed=0)
            if name == 'tex': NOTES.append(f'tex dataset: noise sigma {texture(d)} chosen for ~30 kB files')
            if copies > 1: replicate(d, copies)
        rows, _, _ = read_dataset(d)
        kb = np.mean([os.path.getsize(d / p) for p in rows.path[:256]]) / 1e3
        DATA[name] = d
        row('data', f'{name} dataset', f'{len(rows):,} files ({len(rows) // copies:,} unique), {kb:.1f} kB each, '
            f'{len(rows[rows.split == "train"]) // BS} train batches of {BS} per epoch')
    row('data', 'seconds to write', f'{time.perf_counter() - t:.0f}')


# ---------------------------------------------------------------- decode
import odd_jpegs

@stage('decode', 15)
def decode_checks():
    if not CUDA: row('decode', 'nvJPEG checks', 'skipped (no CUDA)'); return
    from geoloc.predict import Geolocator, _load_one
    from geoloc.photos import decode_image as pdecode
    odd = odd_jpegs.make(WORK / 'odd')
    calls = {'n': 0}
    orig_cpu = D.decode_cpu
    def counting(b): calls['n'] += 1; return orig_cpu(b)
    D.decode_cpu = counting
    try:
        for k, p in odd.items():
            calls['n'] = 0
            data = read_bytes(str(p))
            try:
                out = D.decode(ImageBatch([data], encoded=True), dev)[0]
                ref = odd_jpegs.reference(p, upright=True)
                diff = (np.abs(out.cpu().numpy().astype(int) - ref.astype(int)).mean() if tuple(out.shape) == ref.shape else None)
                how = 'CPU fallback' if calls['n'] else 'nvJPEG'
                v = f'{how}, {tuple(out.shape)}, mean|diff| vs PIL ' + (f'{diff:.2f}' if diff is not None else f'SHAPE vs {ref.shape}')
                ok = 'ok' if diff is not None and diff < 3 else 'CHECK'
            except Exception as e: v, ok = f'raised {type(e).__name__}: {str(e)[:70]}', ('expected' if k == 'truncated' else 'CHECK')
            row('decode', f'train decode {k}', v, '', ok)
        # predict's GPU path: EXIF orientation and CMYK, against the CPU path (upright, PIL)
        areas = synthetic_city(10, seed=0)
        geo = Geolocator(create_model(TrainConfig(arch=ARCH, drop_path=0.0), 10), list(areas.name), areas,
                         size=SIZE, resize=RESIZE, device=dev)
        for k in ('exif_rot6', 'cmyk', 'grayscale', 'progressive', 'big_4000x3000'):
            p = odd[k]
            try:
                loaded = _load_one(str(p), None, 10, geo.resize, False, 0, True)
                g = geo._gpu_images([loaded])[0]
                c = pdecode(p.read_bytes(), resize=geo.resize)
                if g is None: row('decode', f'predict GPU vs CPU {k}', f'GPU path gave no image ({loaded[3]})', 'same image', 'CHECK'); continue
                same = tuple(g.shape) == tuple(c.shape)
                diff = (g.cpu().int() - c.int()).abs().float().mean().item() if same else float('nan')
                row('decode', f'predict GPU vs CPU {k}', f'GPU {tuple(g.shape)} CPU {tuple(c.shape)}' + (f', mean|diff| {diff:.1f}' if same else ''),
                    'same image', 'ok' if same and diff < 8 else 'MISMATCH')
            except Exception as e: row('decode', f'predict GPU vs CPU {k}', f'raised {type(e).__name__}: {str(e)[:60]}', '', 'CHECK')
        # a batch of 256 real-size JPEGs: time of decode as is, with one CMYK inside, and its host bookkeeping
        paths = [str(DATA['tex'] / p) for p in read_dataset(DATA['tex'])[0].path[:BS]]
        blobs = [read_bytes(p) for p in paths]
        good = ImageBatch(blobs, encoded=True)
        bad = ImageBatch(blobs[:-1] + [read_bytes(str(odd['cmyk']))], encoded=True)
        def timed(f, r=3):
            ts = []
            for _ in range(r):
                torch.cuda.synchronize(); t = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
            return float(np.median(ts))
        D.decode(good, dev)
        t_good = timed(lambda: D.decode(good, dev))
        calls['n'] = 0; t_bad = timed(lambda: D.decode(bad, dev), 1); fb = calls['n']
        t_book = timed(lambda: [good.imgs[i] for i in range(len(good))])
        row('decode', f'decode, batch of {BS} (nvJPEG)', f'{t_good * 1000:.0f} ms = {BS / t_good:,.0f} img/s', '', '')
        row('decode', f'  of which [batch.imgs[i] for i] host loop', f'{t_book * 1000:.1f} ms', 'views built once', 'BUG' if t_book > 0.01 else 'ok')
        row('decode', f'decode, one CMYK among {BS}', f'{t_bad * 1000:.0f} ms, {fb} CPU decode(s)', '1 (only the odd one)', 'SLOW' if fb > 1 else 'ok')
    finally: D.decode_cpu = orig_cpu


# ---------------------------------------------------------------- race
@stage('race', 20)
def race_checks():
    if not CUDA: row('race', 'stream checks', 'skipped (no CUDA)'); return
    p = next(iter(sorted((DATA['tex'] / 'images').rglob('*.jpg'))))
    jpg = read_bytes(str(p)); ref = D.decode_cpu(jpg)
    nbytes = ref.numel()
    def trial(decode):
        bad = 0
        for _ in range(20):
            a_ = torch.full(tuple(ref.shape), 7, dtype=torch.uint8, device=dev)
            torch.cuda.synchronize()
            torch.cuda._sleep(100_000_000)              # ~50 ms of GPU time queued on the current stream
            s = a_.sum(dtype=torch.int64)               # a queued read of a_, after the sleep
            del a_                                      # its block returns to this stream's pool at once
            decode()                                    # the output (same size) may take that block
            torch.cuda.synchronize()
            bad += int(s.item() != 7 * nbytes)
        return bad
    from torchvision.io import ImageReadMode, decode_jpeg
    b0 = trial(lambda: D.decode(ImageBatch([jpg], encoded=True), dev))
    b1 = trial(lambda: decode_jpeg(jpg, mode=ImageReadMode.RGB, device=dev))
    row('race', 'decode writes a block still read by queued work', f'geoloc.data.decode {b0}/20 corrupted; bare nvJPEG {b1}/20',
        '0/20 (geoloc)', 'RACE' if b0 else 'ok')
    # the same through geoloc's prefetch thread: deterministic validation batches, side stream made to lag
    cfg = TrainConfig.fast(arch=ARCH, size=SIZE, resize=RESIZE, bs=64, workers=min(4, WORKERS))
    dls = dataloaders(DATA['tex'], cfg, device=dev)
    v = dls.valid
    n = min(8, len(v))
    def batches(prefetch):
        v.prefetch = prefetch; out = []
        for i, (x, y) in enumerate(v):
            if i >= n: break
            out.append(x.float().cpu())
        return out
    ref_b = batches(False)
    orig = BatchTransform.__call__
    def lagging(self, batch, device):
        if torch.device(device).type == 'cuda': torch.cuda._sleep(40_000_000)  # ~20 ms on the (side) stream
        return orig(self, batch, device)
    try:
        BatchTransform.__call__ = lagging
        got = batches(True)
        bad = sum(not torch.allclose(g, r, atol=1e-3) for g, r in zip(got, ref_b))
    finally: BatchTransform.__call__ = orig
    row('race', 'prefetch (side stream lagging) vs sync batches', f'{bad}/{n} batches differ', '0', 'RACE' if bad else 'ok')
    got3 = batches(True)
    bad3 = sum(not torch.allclose(g, r, atol=1e-3) for g, r in zip(got3, ref_b))
    row('race', 'prefetch (no lag) vs sync batches', f'{bad3}/{n} batches differ', '0', 'RACE' if bad3 else 'ok')


# ---------------------------------------------------------------- train
class StepTimes(Callback):
    order = 101
    def before_fit(self): self.t, self.starts, self.t_fit = [], [], time.perf_counter()
    def before_epoch(self): self.starts.append(len(self.t))
    def after_batch(self): self.t.append(time.perf_counter())
    def stats(self, skip):
        t = np.array(self.t); starts = set(self.starts[1:])
        within = [t[i] - t[i - 1] for i in range(max(1, skip), len(t)) if i not in starts]
        gaps = [t[i] - t[i - 1] for i in sorted(starts) if 0 < i < len(t)]
        return (float(np.median(within)) if within else float('nan')), (float(np.median(gaps)) if gaps else float('nan'))


def fit_measure(learn, warm, steps, bs):
    tp, st = bt.Throughput(warm, steps), StepTimes()
    learn.add_cbs([tp, st])
    n_train = len(learn.dls.train)
    epochs = int(math.ceil((warm + steps) / max(1, n_train))) + 1
    t = time.perf_counter()
    try:
        with learn.no_logging(), learn.no_bar(): learn.fit(epochs)
    finally: learn.remove_cbs([tp, st])
    step, gap = st.stats(warm)
    first = st.t[0] - t if st.t else float('nan')
    return tp.rate, step, gap, first, time.perf_counter() - t


TR = {}
@stage('train', 130)
def train_fast():
    cfg = TrainConfig.fast(arch=ARCH, bs=BS, size=SIZE, resize=RESIZE, workers=WORKERS, epochs=50)
    if not CUDA: cfg.compile = False
    warm, steps = (10, 30) if CUDA else (1, 3)
    dls = dataloaders(DATA['tex'], cfg, device=dev)
    x = torch.randn(BS, 3, SIZE, SIZE, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BS,), device=dev)
    syn = DataLoaders(bt.SyntheticLoader(x, y, warm + steps, dls.vocab), bt.SyntheticLoader(x, y, 1, dls.vocab), device=dev)
    learn = focalnet_learner(syn, cfg)
    rate, step, _, first, wall = fit_measure(learn, warm, steps, BS)
    TR.update(model_only=rate, learn=learn, cfg=cfg, dls=dls)
    row('train', f'model only, fast learner (bs {BS}, bf16, CL, compile, fused)', f'{fmt(rate)} img/s',
        'ref 3,181 (plain loop)', f'{rate / 3181:.2f}x ref' if CUDA else '')
    row('train', '  first step (torch.compile included)', f'{first:.0f} s')
    learn.dls = dls
    rate, step, gap, first, wall = fit_measure(learn, *WSTEPS, BS)
    TR['fast'] = rate
    mo = TR['model_only']
    row('train', 'fast preset end to end (tex ~30 kB JPEGs, as is)', f'{fmt(rate)} img/s', '>= 3,000 and >= 0.9x model-only',
        f'{rate / mo:.2f}x model-only; ' + ('MET' if rate >= 3000 and rate / mo >= 0.9 else 'MISSED'))
    row('train', '  step median / first step (compile cached, workers start)', f'{step * 1000:.0f} ms / {first:.1f} s')
WSTEPS = (5, 40) if CUDA else (1, 3)


@stage('predict', 25)
def predict_eager(): predict_run(False)


@stage('predict', 55)
def predict_compiled(): predict_run(True)


def predict_run(comp):
    from geoloc.predict import Geolocator
    areas = synthetic_city(10, seed=0)
    files = [str(DATA['tex'] / p) for p in read_dataset(DATA['tex'])[0].path]
    n = (len(files) // BS) * BS if CUDA else 2 * BS
    files = files[:min(n, 40 * BS)]  # a whole number of batches: no partial batch in the timed call
    if 'pmodel' not in TR: TR['pmodel'] = create_model(TrainConfig(arch=ARCH, drop_path=0.0), len(areas))
    steps = 30 if CUDA else 2
    geo = Geolocator(TR['pmodel'], list(areas.name), areas, size=SIZE, resize=RESIZE, device=dev, precision='bf16', compile=comp)
    t = time.perf_counter(); geo.predict(files[:BS], bs=BS); t_first = time.perf_counter() - t
    before = bp.model_only(geo, BS, steps)
    bp.sync(dev); t = time.perf_counter(); pred = geo.predict(files, bs=BS); bp.sync(dev); sec = time.perf_counter() - t
    after = bp.model_only(geo, BS, steps)
    ok = int((pred.status == 'ok').sum()); rate = ok / sec; mo = (before + after) / 2
    tag = 'compiled' if comp else 'eager'
    row('predict', f'model only, bf16 {tag} (bs {BS})', f'{fmt(mo)} img/s', '', f'first call {t_first:.0f} s')
    row('predict', f'end to end from {len(files):,} files, bf16 {tag}', f'{fmt(rate)} img/s ({ok:,} ok)', '>= 5,000 (H200 bf16)',
        f'{rate / mo:.2f}x model-only; ' + ('MET' if rate >= 5000 else 'MISSED'))
    if comp: TR['geo_c'], TR['pfiles'] = geo, files
    else: TR['geo_e'], TR['pfiles'] = geo, files


@stage('predict', 25)
def predict_retrieval_tta():
    "issue 16 on the GPU: a 200,000-photo retrieval index (< 20% added per photo), and TTA's cost"
    geo = TR.get('geo_c') or TR.get('geo_e')
    if geo is None: row('predict', 'retrieval / tta', 'skipped (no Geolocator)'); return
    from geoloc.retrieval import RetrievalIndex
    files, k = TR['pfiles'], len(geo.classes)
    n_index = 200_000 if CUDA else 2_000
    rng = np.random.default_rng(0)
    def rate(**kw):
        bp.sync(dev); t = time.perf_counter(); p = geo.predict(files, bs=BS, **kw); bp.sync(dev)
        return int((p.status == 'ok').sum()) / (time.perf_counter() - t)
    base = rate()
    geo.index = RetrievalIndex(torch.randn(n_index, geo.model.num_features).half(), 41.39 + rng.normal(0, .02, n_index),
                               2.16 + rng.normal(0, .02, n_index), rng.integers(0, k, n_index))
    try:
        with_index = rate()
        row('predict', f'predict with a {n_index:,}-photo retrieval index', f'{fmt(with_index)} img/s vs {fmt(base)} without',
            '< 20% more time per photo', f'{base / with_index - 1:+.0%}; ' + ('MET' if base / with_index - 1 < 0.2 else 'MISSED'))
    finally: geo.index = None
    for mode in ('flip', 'crops'):
        r = rate(tta=mode)
        row('predict', f'predict, tta {mode}', f'{fmt(r)} img/s', f'{2 if mode == "flip" else 6} passes', f'{base / r:.2f}x the time')


@stage('predict', 30)
def predict_saved_run():
    "a trained run's model/ folder, loaded without pickles, on the GPU against the CPU (same answers?)"
    from geoloc.predict import Geolocator
    from geoloc.train import train
    cfg = TrainConfig.fast(arch='focalnet_pico_srf', size=64, resize=80, bs=64, epochs=1, workers=min(4, WORKERS))
    cfg.compile = False
    run = train(DATA['emu'], cfg, out=WORK / 'run-pico', progress=False)
    files = [str(DATA['emu'] / p) for p in read_dataset(DATA['emu'])[0].path[:256]]
    cpu = Geolocator.load(run, device='cpu').predict(files)
    g = Geolocator.load(run, device=dev)
    gpu = g.predict(files)
    same = float((cpu.district_1 == gpu.district_1).mean())
    dp = float((cpu.prob_1 - gpu.prob_1).abs().max())
    de = float(np.nanmax(np.abs(cpu.estimate_lat - gpu.estimate_lat) * 110_540))
    row('predict', 'saved run (model/ folder) on the GPU vs the CPU', f'top district agrees {same:.1%}; max |dprob| {dp:.3f}; '
        f'max estimate shift {de:.0f} m', f'{g.precision} vs fp32', 'ok' if same > 0.97 else 'CHECK')


@stage('train', 25)
def train_paper():
    cfg = TrainConfig.paper(arch=ARCH, size=SIZE, resize=RESIZE, workers=WORKERS, epochs=50)
    bs = cfg.bs
    warm, steps = (10, 120) if CUDA else (1, 3)
    dls = dataloaders(DATA['tex'], cfg, device=dev)
    x = torch.randn(bs, 3, SIZE, SIZE, device=dev); y = torch.randint(0, 10, (bs,), device=dev)
    syn = DataLoaders(bt.SyntheticLoader(x, y, warm + steps, dls.vocab), bt.SyntheticLoader(x, y, 1, dls.vocab), device=dev)
    mo, *_ = fit_measure(focalnet_learner(syn, cfg), warm, steps, bs)
    row('train', f'model only, paper learner (bs {bs}, fp16, no compile)', f'{fmt(mo)} img/s', 'ref 620 (plain loop, fp16 bs 32)')
    rate, step, gap, first, _ = fit_measure(focalnet_learner(dls, cfg), warm, steps, bs)
    row('train', 'paper preset end to end (CPU decode, GPU aug)', f'{fmt(rate)} img/s', 'PIL loader ref 1,882 (fast model)',
        f'{rate / mo:.2f}x its model-only; fast/paper = {TR.get("fast", float("nan")) / rate:.1f}x (target >= 5x)')


@stage('extra', 12)
def fast_no_prefetch():
    learn, mo = TR['learn'], TR['model_only']; learn.dls = TR['dls']
    learn.dls.train.prefetch = False
    try: r, *_ = fit_measure(learn, *WSTEPS, BS)
    finally: learn.dls.train.prefetch = True
    row('extra', 'fast end to end, NO prefetch thread', f'{fmt(r)} img/s', '', f'{r / mo:.2f}x model-only')


@stage('extra', 15)
def fast_bench_files():
    "the bench's own files: 4096 emulator frames (~12 kB), 15 batches per epoch, so an epoch start every 15 steps"
    learn, mo = TR['learn'], TR['model_only']
    learn.dls = dataloaders(DATA['emu'], TR['cfg'], device=dev)
    r, step, gap, first, _ = fit_measure(learn, *WSTEPS, BS)
    row('extra', f"fast end to end on bench/train.py's files ({len(learn.dls.train)} batches/epoch)", f'{fmt(r)} img/s',
        'what bench/train.py measures', f'{r / mo:.2f}x model-only; {gap:.2f} s stall per epoch start')
    if CUDA: row('train', '  peak GPU memory', f'{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB')


@stage('extra', 45)
def predict_partial_batch():
    if 'geo_c' not in TR: row('extra', 'partial batch', 'skipped (no compiled Geolocator)'); return
    import torch._dynamo
    g0 = torch._dynamo.utils.counters['stats']['unique_graphs']
    k = max(1, BS // 8); t = time.perf_counter(); TR['geo_c'].predict(TR['pfiles'][:k], bs=BS); dt = time.perf_counter() - t
    g1 = torch._dynamo.utils.counters['stats']['unique_graphs']
    row('extra', f'compiled Geolocator, then {k} files (a partial batch)', f'{dt:.1f} s, {g1 - g0} new graph(s)',
        '0 new graphs', 'RECOMPILES (bench/predict.py times one)' if g1 > g0 else 'ok')


run_stages()
save()
print_table(RES, NOTES)
print(f'(stages done in {time.time() - T0:.0f} s; JSON in {OUT / "gpu_check.json"})')
