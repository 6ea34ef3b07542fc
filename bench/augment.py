"""Benchmark: the training batch transform (crop, flip, RandAugment, erasing, normalise) on whole batches, against
the libraries that could do it: kornia's augmentation module (batched, per-sample parameters) and
torchvision.transforms.v2 (one random draw per call, so a per-image loop for per-image randomness), and the host
work of building a batch's image views (issue 13, defect 2: rebuilt per image before the fix).

Inputs: real-sized frames (256 px short side, 341 x 256, the download stage's output of 1024 px street thumbnails
of the stand-ins' world), decoded once; the paper's recipe at 224 px (rand-m9-mstd0.5-inc1, reprob 0.25).
Device: CUDA when present, else the CPU (where all three are far from what a GPU does; the ratios still tell
whether a library would be faster on the same device).

    .venv/bin/python bench/augment.py [--bs 64] [--steps 5] [--device cpu]
"""
import argparse
import io
import math
import os
import time

import numpy as np
import torch
from PIL import Image

from geoloc.data import BatchTransform, ImageBatch, decode_cpu
from geoloc.sim import synthetic_city, synthetic_world

SPEC = 'rand-m9-mstd0.5-inc1'


def frames(n: int) -> list:
    "n decoded 341 x 256 frames rendered like downloads (1024 px JPEG, resized to 256 px short side)."
    world = synthetic_world(synthetic_city(6, seed=1), mapillary=max(n, 50), flickr=5, seed=1)
    out = []
    for iid in world.mapillary['id'][:n]:
        im = Image.open(io.BytesIO(world.render('mapillary', iid, 1024))).convert('RGB')
        im = im.resize((round(im.width * 256 / im.height), 256), Image.Resampling.BILINEAR)
        buf = io.BytesIO(); im.save(buf, 'JPEG', quality=90)
        out.append(decode_cpu(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)))
    return out


def timed(fn, steps: int, sync) -> float:
    "Seconds per call, best of `steps` after one warm-up."
    fn(); sync()
    best = math.inf
    for _ in range(steps):
        t = time.perf_counter(); fn(); sync(); best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    imgs = frames(a.bs)
    print(f'{a.bs} frames of {tuple(imgs[0].shape[1:])} px, 224 px crops, {SPEC}, reprob 0.25, on {dev} '
          f'({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})')
    rows = {}

    same = [im[:, :256, :341] for im in imgs]  # batched libraries need one size: the 4:3 part of each frame, for all
    ours = BatchTransform(train=True, size=224, resize=256, randaug=SPEC, reprob=0.25, seed=0)
    batch = ImageBatch(same, encoded=False)
    rows['geoloc BatchTransform (per-image ops, one grid_sample)'] = timed(lambda: ours(batch, dev), a.steps, sync)
    mixed = ImageBatch(imgs, encoded=False)
    rows['geoloc BatchTransform, mixed 4:3 and 16:9 frames (padded)'] = timed(lambda: ours(mixed, dev), a.steps, sync)

    stacked = torch.stack(same).to(dev).float() / 255
    try:
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment
        kaug = torch.nn.Sequential(
            K.RandomResizedCrop((224, 224), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), resample='bicubic'),
            K.RandomHorizontalFlip(), RandAugment(n=2, m=9),
            K.Normalize(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])),
            K.RandomErasing(p=0.25)).to(dev)
        rows['kornia (RandomResizedCrop, flip, auto.RandAugment, erasing)'] = timed(lambda: kaug(stacked), a.steps, sync)
    except ImportError:
        print('kornia is not installed (pip install kornia): its row is left out')

    from torchvision.transforms import v2
    tv = v2.Compose([v2.RandomResizedCrop(224, scale=(0.08, 1.0), antialias=True,
                                          interpolation=v2.InterpolationMode.BICUBIC),
                     v2.RandomHorizontalFlip(), v2.RandAugment(num_ops=2, magnitude=9), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), v2.RandomErasing(p=0.25)])
    dev_imgs = [im.to(dev) for im in same]
    rows['torchvision.transforms.v2 (per-image loop)'] = timed(lambda: torch.stack([tv(im) for im in dev_imgs]), a.steps, sync)
    rows['torchvision.transforms.v2 (one call on the batch: one draw for all)'] = timed(
        lambda: tv(torch.stack(dev_imgs)), a.steps, sync)

    base = rows['geoloc BatchTransform (per-image ops, one grid_sample)']
    print(f"\n{'transform':72s} {'ms/batch':>9s} {'images/s':>9s} {'vs geoloc':>9s}")
    for k, v in rows.items():
        print(f'{k:72s} {v * 1e3:9.1f} {a.bs / v:9.0f} {v / base:8.2f}x')

    # defect 2: the host work of a batch's image views, read once (now) vs rebuilt for every image (before)
    big = ImageBatch([torch.zeros(3, 256, 341, dtype=torch.uint8) for _ in range(256)], encoded=False)
    t = time.perf_counter(); v = big.imgs; [v[i] for i in range(256)]; once = time.perf_counter() - t
    ends = np.cumsum([math.prod(s) for s in big.shapes])
    def rebuild(): return [big.flat[e - math.prod(s):e].view(s) for s, e in zip(big.shapes, ends)]
    t = time.perf_counter(); [rebuild()[i] for i in range(256)]; per_image = time.perf_counter() - t
    print(f'\nhost time for a 256-image batch\'s views: {once * 1e3:.2f} ms read once, {per_image * 1e3:.0f} ms rebuilt '
          f'per image (the code before issue 13): {per_image / once:,.0f}x')


if __name__ == '__main__':
    main()
