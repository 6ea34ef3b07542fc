"""geoloc.data against timm, on the CPU device: the batched pipeline that runs on the GPU is the same code, so its
crops, flips, RandAugment, erasing and normalisation are checked here against timm's own per-image CPU transforms;
and each input-pipeline defect found in review has its test (numbered as in issue 13)."""
import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from geoloc.data import (BatchTransform, ImageBatch, ImageItems, ImageLoader, batch_decode, crop_boxes, decode,
                         decode_cpu, parse_randaug)
from geoloc.sim import synthetic_city, synthetic_world

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
SPEC = 'rand-m9-mstd0.5-inc1'   # the paper's (and timm's FocalNet recipe's) RandAugment


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def photos():
    "24 street frames of the stand-ins' world as real-sized JPEGs (1024 px renders shrunk to 256 px short side)."
    world = synthetic_world(synthetic_city(6, seed=2), mapillary=400, flickr=10, seed=2)
    out = []
    for iid in world.mapillary['id'][::16][:24]:
        im = Image.open(io.BytesIO(world.render('mapillary', iid, 1024))).convert('RGB')
        im = im.resize((round(im.width * 256 / im.height), 256), Image.BICUBIC)
        buf = io.BytesIO(); im.save(buf, 'JPEG', quality=90)
        out.append(buf.getvalue())
    return out


def tensor(b: bytes) -> torch.Tensor: return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO(); Image.fromarray(arr).save(buf, 'JPEG', quality=92, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ against timm
def test_crop_boxes_draw_timms_random_resized_crop():
    "Scale and aspect ratio of the crops follow torchvision/timm's RandomResizedCrop.get_params (KS test)."
    from torchvision.transforms import RandomResizedCrop
    n, H, W = 4000, 256, 341
    ours = crop_boxes(np.tile([[H, W]], (n, 1)), np.random.default_rng(0))
    torch.manual_seed(0)
    img = torch.zeros(3, H, W)
    ref = np.array([RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)])  # i, j, h, w
    for ours_v, ref_v in ((ours[:, 2] * ours[:, 3] / (H * W), ref[:, 2] * ref[:, 3] / (H * W)),
                          (np.log(ours[:, 3] / ours[:, 2]), np.log(ref[:, 3] / ref[:, 2]))):
        assert stats.ks_2samp(ours_v, ref_v).pvalue > 0.001
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= H).all() and (ours[:, 1] + ours[:, 3] <= W).all()


def test_randaugment_op_rates_match_timm(photos):
    """Each of the 15 operations is applied as often as in timm's RandAugment for the same spec (2 layers, each op
    applied with probability 0.5): timm's own transform is run on PIL images and its operations counted."""
    from timm.data.auto_augment import rand_augment_transform
    ra = rand_augment_transform(SPEC, {'translate_const': 100, 'img_mean': (124, 116, 104)})
    counts = {op.name: 0 for op in ra.ops}
    for op in ra.ops:
        fn = op.aug_fn
        def counted(img, *a, _fn=fn, _name=op.name, **k):
            counts[_name] += 1
            try: return _fn(img, *a, **k)
            except ValueError: return img   # timm's PosterizeIncreasing at magnitude 10 asks Pillow for 0 bits
        op.aug_fn = counted
    random.seed(0); np.random.seed(0)
    small = Image.open(io.BytesIO(photos[0])).convert('RGB').resize((64, 48))
    n = 3000
    for _ in range(n): ra(small)
    tfm = BatchTransform(train=True, size=32, resize=36, randaug=SPEC, seed=0)
    ours = {name: 0 for name in tfm.ra['ops']}
    for _ in range(n // 500):
        for op, m, sign, on in tfm._draw(500):
            for k in op[on]: ours[tfm.ra['ops'][k]] += 1
    assert list(ours) == list(counts)   # the same operations, in timm's order
    for name in counts:                 # binomial(3000, 1/15): sd ~ 9 around 200
        assert abs(ours[name] - counts[name]) < 6 * math.sqrt(n * 2 / 30), (name, ours[name], counts[name])
    assert abs(sum(ours.values()) / n - 1.0) < 0.08   # one applied op per image on average (2 layers x p 0.5)


def test_colour_ops_equal_timms_ops(photos):
    "Each colour operation at a fixed magnitude gives timm's (PIL's) pixels, to rounding (timm draws the sign per image)."
    from timm.data.auto_augment import AugmentOp
    from geoloc.data import color_op
    pil = [Image.open(io.BytesIO(b)).convert('RGB').resize((96, 72)) for b in photos[:8]]
    x = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() for p in pil])
    ra = parse_randaug(SPEC)
    random.seed(0)
    for k, name in enumerate(ra['ops']):
        if ra['geometric'][k]: continue
        for m in (3.0, 9.0):
            op = AugmentOp(name, prob=1.0, magnitude=m, hparams={'img_mean': (124, 116, 104)})
            ref = torch.stack([torch.from_numpy(np.array(op(p))).permute(2, 0, 1).float() for p in pil])
            pos, neg = (color_op(name, x.clone(), torch.full((8,), m), torch.full((8,), s)) for s in (1., -1.))
            err = torch.minimum((pos - ref).abs().mean((1, 2, 3)), (neg - ref).abs().mean((1, 2, 3)))
            assert err.max() < 1.0, (name, m, err)


def test_flip_and_erasing_rates_match_timm(photos):
    "Horizontal flips half the time; random erasing on `reprob` of the images, as timm's RandomErasing."
    from timm.data.random_erasing import RandomErasing
    imgs = [decode_cpu(tensor(b)) for b in photos]
    tfm = BatchTransform(train=True, size=64, resize=72, reprob=0.25, seed=3)
    flips, erased = [], []
    for _ in range(20):
        tfm(ImageBatch(imgs, encoded=False), 'cpu')
        flips.append(tfm.last_flipped); erased.append(tfm.last_erased)
    er = RandomErasing(probability=0.25, mode='pixel', device='cpu')
    torch.manual_seed(0); random.seed(0)
    x = torch.zeros(3, 64, 64)
    timm_rate = np.mean([bool(er(x.clone()).abs().sum() > 0) for _ in range(2000)])
    n = 20 * len(imgs)
    assert abs(np.concatenate(flips).mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert abs(np.concatenate(erased).mean() - timm_rate) < 4 * math.sqrt(0.25 * 0.75 / n) + 0.02


def test_validation_batch_equals_timms_eval_transform(photos):
    "The validation batch is timm's eval transform (resize 256 bicubic antialiased, centre 224, normalise), to a level."
    from timm.data import create_transform, resolve_data_config
    import timm
    cfg = resolve_data_config({}, model=timm.create_model('focalnet_tiny_srf', pretrained=False, num_classes=10))
    evaluate = create_transform(**{**cfg, 'crop_pct': 0.875, 'interpolation': 'bicubic'}, is_training=False)
    ref = torch.stack([evaluate(Image.open(io.BytesIO(b)).convert('RGB')) for b in photos[:12]])
    tfm = BatchTransform(train=False, size=224, resize=256)
    ours = tfm(ImageBatch([tensor(b) for b in photos[:12]], encoded=True), 'cpu')
    assert ours.shape == ref.shape == (12, 3, 224, 224)
    np.testing.assert_allclose(tfm.mean.numpy(), cfg['mean']); np.testing.assert_allclose(tfm.std.numpy(), cfg['std'])
    levels = (ours - ref).abs() * torch.tensor(cfg['std']).view(1, 3, 1, 1) * 255
    assert levels.mean() < 0.5 and levels.max() < 8, (float(levels.mean()), float(levels.max()))


def _zero_bits_posterize(transform):
    "timm's PosterizeIncreasing at magnitude 10 asks Pillow for 0 bits, which Pillow now refuses: give the old black."
    for t in transform.transforms:
        for op in getattr(t, 'ops', []):
            if op.name.startswith('Posterize'):
                op.aug_fn = lambda img, bits, _f=op.aug_fn, **k: _f(img, bits, **k) if bits >= 1 else Image.new(img.mode, img.size)


def test_training_batch_statistics_match_timms_train_transform(photos):
    """Whole training batches (crop, flip, RandAugment, normalise) have the distribution of per-image channel means
    and spreads of timm's per-image train transform of the same config on the same photos (KS tests; erasing off:
    its noise would hide the rest)."""
    from timm.data import create_transform
    ref_t = create_transform(input_size=(3, 96, 96), is_training=True, auto_augment=SPEC, interpolation='bicubic',
                             re_prob=0.0, hflip=0.5)
    _zero_bits_posterize(ref_t)
    pil = [Image.open(io.BytesIO(b)).convert('RGB').resize((144, 108)) for b in photos]
    torch.manual_seed(0); random.seed(0); np.random.seed(0)
    reps = 20
    ref = torch.stack([ref_t(p) for _ in range(reps) for p in pil])
    tfm = BatchTransform(train=True, size=96, resize=108, randaug=SPEC, seed=0)
    imgs = [decode_cpu(tensor(jpeg(np.asarray(p)))) for p in pil]
    ours = torch.cat([tfm(ImageBatch(imgs, encoded=False), 'cpu') for _ in range(reps)])
    assert ours.shape == ref.shape
    for f in (lambda t: t.mean((2, 3)), lambda t: t.std((2, 3))):
        a, b = f(ours), f(ref)
        for c in range(3): assert stats.ks_2samp(a[:, c].numpy(), b[:, c].numpy()).pvalue > 0.001, c


# ------------------------------------------------------------------------------------------------ the defects
def test_1_geometric_randaugment_ops_move_pixels():
    "Defect 1: Rotate, ShearX/Y and TranslateX/YRel were matched by name against op numbers, and never ran."
    ra = parse_randaug(SPEC)
    assert ra['geometric'].sum() == 5 and [ra['ops'][i] for i in np.flatnonzero(ra['geometric'])] == [
        'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel']
    tfm = BatchTransform(train=True, size=48, resize=56, randaug=SPEC, seed=4)
    n = 400
    black = torch.zeros(n, 3, 56, 56)
    tfm._cur = tfm._draw(n)
    out = tfm._geometry(black, np.tile([[56, 56]], (n, 1)))
    geometric = np.zeros(n, bool)
    for op, m, sign, on in tfm._cur: geometric |= on & ra['geometric'][op] & (m > 1)
    filled = (out > 1).flatten(1).float().mean(1).numpy()   # fill colour where pixels came from outside the crop
    assert geometric.sum() > 40
    assert (filled[geometric] > 0.01).mean() > 0.9 and (filled[~geometric & ~tfm.last_moved] == 0).all()
    assert tfm.last_moved[geometric].all()


def test_2_batch_views_are_built_once():
    "Defect 2: `batch.imgs` rebuilt every view on each read, and decode read it once per image (quadratic)."
    b = ImageBatch([torch.zeros(3, 8, 8, dtype=torch.uint8) for _ in range(256)], encoded=False)
    assert b.imgs is b.imgs
    import pickle
    assert pickle.loads(pickle.dumps(b))._views is None   # views are not shipped between processes


def test_3_the_stream_is_synchronised_before_every_decoder_call(photos):
    "Defect 3: nvJPEG does not wait for the caller's stream; a sync must precede each decode (batch and retries)."
    calls = []
    def decoder(d, device):
        calls.append(('decode', len(d) if isinstance(d, list) else 1))
        if isinstance(d, list): raise RuntimeError('batch refused')   # force the per-image retries
        return decode_cpu(d)
    got = batch_decode([tensor(b) for b in photos[:3]], 'cpu', decoder=decoder, sync=lambda: calls.append(('sync',)))
    assert all(g is not None for g in got)
    assert calls == [('sync',), ('decode', 3)] + [('sync',), ('decode', 1)] * 3


def test_4_exif_orientation_is_the_same_on_both_paths():
    "Defect 4: the GPU decoder ignores EXIF; both paths must give the upright photo."
    arr = np.zeros((40, 60, 3), np.uint8); arr[:6] = 255; arr[:, :6, 0] = 200
    batch = []
    for o in (1, 3, 6, 8):
        ex = Image.Exif(); ex[0x0112] = o
        batch.append(tensor(jpeg(arr, exif=ex.tobytes())))
    cpu = decode(ImageBatch(batch, encoded=True), 'cpu')
    from torchvision.io import ImageReadMode, decode_jpeg
    gpu = decode(ImageBatch(batch, encoded=True), 'cpu', sync=lambda: None,
                 decoder=lambda d, device: decode_jpeg(d, mode=ImageReadMode.RGB, device=device))  # ignores EXIF, as nvJPEG
    assert [tuple(i.shape[1:]) for i in gpu] == [(40, 60), (40, 60), (60, 40), (60, 40)]
    for a, b in zip(cpu, gpu): assert torch.equal(a, b)


def test_5_one_odd_jpeg_costs_only_itself(photos):
    "Defect 5: a CMYK (or progressive, or huge) file sent the whole batch to CPU decoding."
    cmyk = io.BytesIO(); Image.open(io.BytesIO(photos[0])).convert('CMYK').save(cmyk, 'JPEG')
    batch = [tensor(photos[1]), tensor(cmyk.getvalue()), tensor(photos[2]), tensor(photos[3])]
    from torchvision.io import ImageReadMode, decode_jpeg
    seen = []
    def nvjpeg_like(d, device):
        items = d if isinstance(d, list) else [d]
        if any(Image.open(io.BytesIO(bytes(x.numpy()))).mode == 'CMYK' for x in items): raise RuntimeError('unsupported')
        seen.append(len(items))
        return decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
    import geoloc.data as data
    cpu_calls = []
    real = data.decode_cpu
    try:
        data.decode_cpu = lambda b: cpu_calls.append(1) or real(b)
        out = decode(ImageBatch(batch, encoded=True), 'cpu', decoder=nvjpeg_like, sync=lambda: None)
    finally: data.decode_cpu = real
    assert seen == [1, 1, 1] and len(cpu_calls) == 1          # three on the "GPU" one by one, only the CMYK on the CPU
    assert torch.equal(out[1], decode_cpu(batch[1]))


def test_8_loader_workers_live_across_epochs(photos, tmp_path):
    "Defect 8: fastai started a new worker pool every epoch despite persistent_workers=True."
    paths = []
    for i, b in enumerate(photos[:12]):
        (tmp_path / f'{i}.jpg').write_bytes(b); paths.append(tmp_path / f'{i}.jpg')
    dl = ImageLoader(ImageItems(paths, np.zeros(12, int), list(range(12)), ['x']),
                     BatchTransform(train=True, size=32, resize=40, seed=0), bs=4, shuffle=True, device='cpu',
                     num_workers=2, persistent_workers=True)
    pids, seen = [], []
    for _ in range(3):
        n = sum(len(xb) for xb, _ in dl)
        seen.append(n); pids.append(dl.worker_pids())
    assert seen == [12, 12, 12] and len(set(pids[0])) == 2 and pids[0] == pids[1] == pids[2]
