"""Training throughput of geoloc.train: FocalNet-T at 224 px from 256 px JPEG files on disk.

On a GPU (one run, same process):
  1. model-only images/s: the fast preset's learner (bf16, channels_last, torch.compile, MixUp/CutMix, clip,
     schedule) fed synthetic tensors already on the GPU;
  2. fast preset end to end: JPEG bytes read by workers, nvJPEG decoding and augmentation on the GPU;
  3. paper preset end to end: batch 32, fp16, no compile, JPEGs decoded by CPU workers;
  then the ratios the issue sets (fast >= 3,000 images/s, >= 90% of model-only, >= 5x paper) and the time the
  paper's full Mapillary recipe (164k images x 50 epochs) would take against its 9h08 on an RTX 3090.
Without a GPU: the CPU side of the pipeline (bytes read and JPEGs decoded per second, one process and all
cores), and a note that the GPU figures are still open.

    python bench/train.py                    # whatever the machine has
    python bench/train.py --images 2048      # fewer files (faster set-up)
    python bench/train.py --device cpu --arch focalnet_pico_srf --size 64 --resize 80 --images 256 --steps 6
                                             # the GPU measurement's code path on a CPU, tiny (numbers meaningless)
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from geoloc.data import BatchTransform, ImageBatch, ImageItems, ImageLoader, decode_cpu, read_bytes  # noqa: E402
from geoloc.labeling import read_dataset  # noqa: E402
from geoloc.sim import toy_dataset  # noqa: E402
from geoloc.train import TrainConfig, dataloaders, focalnet_learner  # noqa: E402
from fastai.callback.core import Callback, CancelFitException, CancelValidException  # noqa: E402
from fastai.data.core import DataLoaders  # noqa: E402
from fastai.data.load import DataLoader  # noqa: E402

PAPER_SECONDS = 9 * 3600 + 8 * 60        # FocalNet-T on Mapillary, RTX 3090 (Table 1)
MAPILLARY_TRAIN, EPOCHS = 164_000, 50    # ~90% of 182,130 images, 50 epochs


class Throughput(Callback):
    "Time `steps` training batches after `warmup` batches (compilation, cudnn autotuning), then stop the fit."
    order = 100
    def __init__(self, warmup, steps): self.warmup, self.steps, self.i, self.n = warmup, steps, 0, 0
    def _sync(self):
        if torch.cuda.is_available(): torch.cuda.synchronize()
    def before_validate(self): raise CancelValidException
    def before_batch(self):
        if self.i == self.warmup: self._sync(); self.t0 = time.perf_counter()
    def after_batch(self):
        self.i += 1
        if self.i > self.warmup: self.n += find_len(self.yb)
        if self.i == self.warmup + self.steps:
            self._sync(); self.seconds = time.perf_counter() - self.t0
            raise CancelFitException
    @property
    def rate(self): return self.n / self.seconds


def find_len(yb): return len(yb[0])


class SyntheticLoader(DataLoader):
    "Yields one fixed batch (already on the device) forever: the model-only measurement."
    def __init__(self, x, y, n_batches, vocab):
        self.x, self.y, self.nb, self.vocab = x, y, n_batches, vocab
        super().__init__(None, bs=len(x), n=n_batches * len(x), device=x.device)
        self.dataset = ImageItems([], vocab=list(vocab))  # what the learner reads the classes from
    def __len__(self): return self.nb
    def __iter__(self):
        for _ in range(self.nb): yield self.x.clone(), self.y


def measure(dls, cfg, warmup, steps, epochs_needed):
    learn = focalnet_learner(dls, cfg)
    tp = Throughput(warmup, steps)
    learn.add_cb(tp)
    with learn.no_logging(), learn.no_bar(): learn.fit(epochs_needed)
    return tp.rate


def make_files(folder, n, size):
    "n emulated street frames (10 districts), short side `size` px, as the download stage stores them."
    return toy_dataset(folder, n_classes=10, per_class=max(2, n // 10), size=size, valid_pct=0.05, seed=0)


class _DecodedLoader(ImageLoader):
    "The CPU path's workers (read + decode), without the batch transform."
    @property
    def _on_gpu(self): return False
    def after_batch(self, b): return b

class _BytesLoader(_DecodedLoader):
    "The GPU path's workers: they only read bytes."
    @property
    def _on_gpu(self): return True


def cpu_pipeline(ds):
    "Bytes read and JPEGs decoded per second on this machine's CPUs."
    rows, _, _ = read_dataset(ds)
    paths = [str(Path(ds) / p) for p in rows.path]
    out = {}
    t = time.perf_counter(); blobs = [read_bytes(p) for p in paths]; dt = time.perf_counter() - t
    mb = sum(len(b) for b in blobs) / 1e6
    out['read 1 process'] = (len(paths) / dt, mb / dt)
    t = time.perf_counter(); imgs = [decode_cpu(b) for b in blobs]; dt = time.perf_counter() - t
    out['decode 1 process'] = (len(paths) / dt, mb / dt)
    n_cpu = os.cpu_count() or 1
    items = ImageItems(paths, np.zeros(len(paths), int), vocab=['x'])
    for cls, name in ((_BytesLoader, 'read'), (_DecodedLoader, 'read + decode')):
        dl = cls(items, None, bs=64, num_workers=n_cpu, device=None)
        t = time.perf_counter(); n = sum(len(b[0]) for b in dl); dt = time.perf_counter() - t
        out[f'{name}, DataLoader {n_cpu} workers'] = (n / dt, mb * n / len(paths) / dt)
    # the batch transforms themselves on the CPU (crop/flip/RandAugment/erase at 224): the CPU fallback's cost
    cfg = TrainConfig.paper(size=224, resize=256)
    tfm, batch = BatchTransform.from_config(cfg, train=True), ImageBatch(imgs[:64], encoded=False)
    tfm(batch, 'cpu')
    t = time.perf_counter(); tfm(batch, 'cpu'); dt = time.perf_counter() - t
    out['paper augmentations on CPU tensors (1 process)'] = (64 / dt, float('nan'))
    return out, len(paths), mb / len(paths) * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=4096, help='JPEG files to write (10 classes)')
    p.add_argument('--arch', default='focalnet_tiny_srf')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--resize', type=int, default=256)
    p.add_argument('--bs', type=int, default=256, help='fast preset batch')
    p.add_argument('--steps', type=int, default=40, help='timed batches per measurement (fast preset)')
    p.add_argument('--workers', type=int, default=None)
    p.add_argument('--device', default=None)
    p.add_argument('--dir', default=None, help='where to write the JPEGs (default: a temporary folder)')
    p.add_argument('--json', default=None, help='also write the figures to this JSON file')
    a = p.parse_args()
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    folder = Path(a.dir or tempfile.mkdtemp(prefix='geoloc-bench-train-'))
    t = time.perf_counter()
    ds = folder / 'ds'
    if not (ds / 'dataset.parquet').exists(): make_files(ds, a.images, a.resize)
    print(f'{a.images} JPEG files (geoloc.sim street frames), short side {a.resize} px, in {folder} '
          f'({time.perf_counter() - t:.0f} s to write)')
    res = {}
    cpu, n, kb = cpu_pipeline(ds)
    print(f'\nCPU side of the input pipeline ({n} files, {kb:.1f} KB each on average):')
    for k, (ips, mbs) in cpu.items():
        print(f'  {k:<48} {ips:9,.0f} images/s' + ('' if np.isnan(mbs) else f'  {mbs:7.1f} MB/s'))
    res['cpu'] = {k: v[0] for k, v in cpu.items()}
    if device.type != 'cuda' and a.device is None:
        print('\nNo GPU here: the GPU figures (model-only, fast and paper presets end to end, the 164k x 50 '
              'extrapolation) are still open. Run this script on a GPU machine.')
        if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
        return
    workers = a.workers if a.workers is not None else min(16, os.cpu_count() or 1)
    common = dict(arch=a.arch, size=a.size, resize=a.resize, workers=workers, epochs=50)
    n_train = len(read_dataset(ds)[0].query("split == 'train'"))
    bs = min(a.bs, max(8, n_train // 4))  # a few batches per epoch even on a small file set
    if bs != a.bs: print(f'(batch {bs} instead of {a.bs}: only {n_train} training files)')
    fast = TrainConfig.fast(bs=bs, **common)
    paper = TrainConfig.paper(**common)
    if device.type == 'cpu': fast.compile = False
    steps, warm = a.steps, 10 if device.type == 'cuda' else 1
    epochs_for = lambda c, s: int(np.ceil((warm + s) * c.bs / (n_train // c.bs * c.bs))) + 1
    # 1. model-only: the fast learner, synthetic tensors on the device
    dls = dataloaders(ds, fast, device=device)
    x = torch.randn(fast.bs, 3, a.size, a.size, device=device)
    if fast.channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (fast.bs,), device=device)
    syn = DataLoaders(SyntheticLoader(x, y, warm + steps, dls.vocab), SyntheticLoader(x, y, 1, dls.vocab), device=device)
    res['model_only'] = measure(syn, fast, warm, steps, 1)
    # 2. fast preset end to end
    res['fast'] = measure(dls, fast, warm, steps, epochs_for(fast, steps))
    # 3. paper preset end to end (batch 32: as many images as the fast measurement, at most 200 batches)
    p_steps = min(200, steps * fast.bs // paper.bs)
    res['paper'] = measure(dataloaders(ds, paper, device=device), paper, warm, p_steps, epochs_for(paper, p_steps))
    full = MAPILLARY_TRAIN * EPOCHS / res['fast']
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'\n{a.arch} at {a.size} px on {name}, training images/s (timed batches after {warm} warm-up batches):')
    print(f"  model only (fast learner, synthetic tensors, bs {fast.bs}):  {res['model_only']:8,.0f}")
    print(f"  fast preset end to end (bs {fast.bs}, GPU decode + aug):     {res['fast']:8,.0f}"
          f"   {res['fast'] / res['model_only']:.0%} of model-only (target >= 90%)")
    print(f"  paper preset end to end (bs {paper.bs}, fp16, CPU decode):  {res['paper']:8,.0f}"
          f"   fast / paper = {res['fast'] / res['paper']:.1f}x (target >= 5x)")
    print(f"  fast preset >= 3,000 images/s: {'yes' if res['fast'] >= 3000 else 'no'}")
    print(f"\nThe paper's full Mapillary recipe ({MAPILLARY_TRAIN:,} images x {EPOCHS} epochs) at the fast preset's "
          f"rate: {full / 3600:.2f} h, against 9h08 on an RTX 3090 ({PAPER_SECONDS / full:.1f}x faster; "
          f"the paper's implied rate is {MAPILLARY_TRAIN * EPOCHS / PAPER_SECONDS:.0f} images/s)")
    res['full_recipe_hours'] = full / 3600
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
