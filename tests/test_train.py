"""geoloc.train end to end on the CPU: learning, a SIGKILLed run resumed, the schedule, a saved run's logits,
torch.compile + export, the CLI, and two training processes on the gloo backend under `accelerate launch`."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoloc.sim import toy_dataset
from geoloc.train import (METRICS, TrainConfig, dataloaders, focalnet_learner, load_run, predict_logits,
                          train)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
TINY = dict(arch='focalnet_pico_srf', size=64, resize=80, workers=0)
CLI_TINY = ['--preset', 'fast', '--arch', 'focalnet_pico_srf', '--size', '64', '--resize', '80', '--bs', '16',
            '--workers', '0', '--no-compile', '--quiet']


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "8 districts x 30 images (24 train, 6 valid each), 80 px, the easy 'stripes' world."
    return toy_dataset(tmp_path_factory.mktemp('toy') / 'ds', n_classes=8, per_class=30, size=80, images='stripes', seed=3)


@pytest.fixture(autouse=True, scope='module')
def _one_torch_thread():
    "One intra-op thread: tiny models gain nothing from two, and spinning OpenMP threads stall a busy 2-core machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', **extra}
    env.pop('CUDA_VISIBLE_DEVICES', None)
    return env


def test_full_recipe_learns_above_chance(toy, tmp_path):
    "With every augmentation of the recipe on (RandAugment, MixUp/CutMix, smoothing, erasing), the toy world is learnt."
    cfg = TrainConfig.paper(epochs=12, warmup_epochs=1, bs=16, lr=3e-3, lr_batch=16, **TINY)
    assert cfg.randaug and cfg.mixup and cfg.cutmix and cfg.reprob and cfg.label_smoothing
    run = train(toy, cfg, tmp_path / 'run', progress=False)
    s = json.loads((run / 'summary.json').read_text())
    assert s['top1'] > 0.35, s  # chance: 1/8
    assert s['top5'] > s['top1']
    assert (s['arch'], s['preset'], s['images'], s['epochs'], s['valid_images']) == ('focalnet_pico_srf', 'paper', 192, 12, 48)


def test_schedule_steps_per_batch_as_configured(toy):
    "fast preset: warm-up from the scaled warm-up lr to the scaled peak, then cosine to the scaled final lr."
    cfg = TrainConfig.fast(epochs=3, warmup_epochs=1, bs=16, compile=False, mixup=0, cutmix=0, randaug='', reprob=0, **TINY)
    learn = focalnet_learner(dataloaders(toy, cfg), cfg)
    with learn.no_logging(), learn.no_bar(): learn.fit(cfg.epochs)
    lrs, n = np.array(learn.recorder.hps['lr']), len(learn.dls.train)
    assert len(lrs) == 3 * n == 3 * (192 // 16)
    peak = cfg.scaled(cfg.lr)
    assert peak == pytest.approx(5e-4 * 16 / 512)
    assert lrs[0] == pytest.approx(cfg.scaled(cfg.warmup_lr))
    assert lrs[n - 1] == pytest.approx(peak, rel=1 / n)
    assert lrs[n] == pytest.approx(peak)                              # continuous: the cosine starts after warm-up
    assert lrs[-1] == pytest.approx(cfg.scaled(cfg.min_lr), abs=peak * 0.02)
    assert (np.diff(lrs[:n]) > 0).all() and (np.diff(lrs[n:]) < 0).all()
    assert [g['weight_decay'] for g in learn.opt.opt.param_groups] == [0.05, 0.0]


def test_sigkilled_run_resumes_at_the_right_epoch(toy, tmp_path):
    "A training process killed with SIGKILL mid-run continues from its last checkpoint, each epoch logged once."
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-m', 'geoloc.cli', 'train', '--dataset', str(toy), '--epochs', '40',
                             '--out', str(out), *CLI_TINY], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            csv = out / 'metrics.csv'
            if csv.exists() and len(csv.read_text().splitlines()) >= 3: break  # header + 2 epochs
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else: pytest.fail('the training process wrote no 2 epochs in 90 s')
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=False)['epoch']
    assert 1 <= done < 39 and not (out / 'summary.json').exists()
    before = pd.read_csv(out / 'metrics.csv')
    # the rest of the run, shortened so that the test stays quick: same config otherwise
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['epochs'] == 40 and cfg['warmup_epochs'] == pytest.approx(16)
    cfg['epochs'] = done + 3
    (out / 'config.json').write_text(json.dumps(cfg))
    train(None, out=out, resume=True, progress=False)
    s = json.loads((out / 'summary.json').read_text())
    assert s['resumed_from'] == done + 1
    m = pd.read_csv(out / 'metrics.csv')
    assert list(m.columns) == METRICS
    assert m.epoch.tolist() == list(range(done + 3))
    pd.testing.assert_frame_equal(m.iloc[:done + 1], before.iloc[:done + 1])  # epochs before the kill kept as logged


def test_cli_run_folder_and_saved_run_predicts_the_same_logits(toy, tmp_path, capsys):
    "`geoloc train` writes the run folder contract (a relative --out is the user's cwd); the export reproduces the logits."
    out = tmp_path / 'cli-run'
    r = subprocess.run([sys.executable, '-m', 'geoloc.cli', 'train', '--dataset', str(toy), '--epochs', '2',
                        '--out', 'cli-run', *CLI_TINY], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'focalnet_pico_srf (fast): top-1' in r.stdout
    assert {'config.json', 'metrics.csv', 'predictions.parquet', 'classes.json', 'areas.geojson', 'model.pkl',
            'summary.json'} <= {p.name for p in out.iterdir()}
    cfg = TrainConfig.load(out / 'config.json')
    assert (cfg.preset, cfg.epochs, cfg.bs, cfg.compile, cfg.wd) == ('fast', 2, 16, False, 0.05)
    assert cfg.warmup_epochs == pytest.approx(0.8)                  # the preset's 20/50 warm-up share
    preds = pd.read_parquet(out / 'predictions.parquet')
    ds = pd.read_parquet(toy / 'dataset.parquet')
    valid = ds[ds.split == 'valid']
    assert preds.id.tolist() == valid.id.tolist()
    classes = json.loads((out / 'classes.json').read_text())
    assert preds.target.tolist() == [classes.index(d) for d in valid.district]
    learn = load_run(out, trust_pickle=True)
    assert list(learn.dls.vocab) == classes
    logits = predict_logits(learn, [toy / p for p in valid.path], bs=7)
    np.testing.assert_allclose(logits.numpy(), np.stack(preds.logits), atol=1e-4)
    # errors a user can cause: one line, no traceback (the dispatcher in-process: no second interpreter start)
    from geoloc.cli import main
    assert main(['train', '--dataset', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x'), *CLI_TINY]) == 1
    assert main(['train', '--dataset', str(toy), '--out', str(out), *CLI_TINY]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and 'dataset.parquet not found' in err[0] and 'already holds a run' in err[1]
    # starting from weights: another run's model folder (its head is new here), and files that do not fit
    from timm import create_model
    from geoloc.weights import read_state
    assert main(['train', '--dataset', str(toy), '--out', str(tmp_path / 'ft'), '--epochs', '1', '--weights', str(out),
                 *CLI_TINY]) == 0
    ft = TrainConfig.load(tmp_path / 'ft' / 'config.json')
    assert ft.weights == str(out) and json.loads((tmp_path / 'ft' / 'summary.json').read_text())['weights'] == str(out)
    wide = create_model('focalnet_pico_srf', num_classes=3, embed_dim=24)
    torch.save(wide.state_dict(), tmp_path / 'wide.pth')
    torch.save({'model': wide.state_dict(), 'gadget': Path('.')}, tmp_path / 'pickled.pth')   # a pickle carrying an object
    capsys.readouterr()
    assert main(['train', '--dataset', str(toy), '--out', str(tmp_path / 'w'), '--weights', str(tmp_path / 'wide.pth'), *CLI_TINY]) == 1
    err = capsys.readouterr().err
    assert 'does not fit this FocalNet' in err and 'stem.proj.weight: (24, 3, 4, 4) in the file, (16, 3, 4, 4) in the model' in err
    assert main(['train', '--dataset', str(toy), '--out', str(tmp_path / 'p'), '--weights', str(tmp_path / 'pickled.pth'), *CLI_TINY]) == 1
    assert 'runs code' in capsys.readouterr().err
    assert len(read_state(tmp_path / 'pickled.pth', trust_pickle=True)) == len(wide.state_dict())
    assert main(['train', '--dataset', str(toy), '--out', str(tmp_path / 'o'), '--preset', 'finetune', *CLI_TINY[2:]]) == 1
    assert 'focalnet_pico_srf.ms_in1k' in capsys.readouterr().err   # pico has no pretrained tag: said, not a traceback


def test_compiled_fit_still_saves_and_exports(toy, tmp_path):
    "The torch.compile callback (eager backend here, to stay quick on a CPU) leaves saving and export working."
    cfg = TrainConfig.fast(epochs=1, warmup_epochs=0, bs=16, compile=True, compile_backend='eager', **TINY)
    run = train(toy, cfg, tmp_path / 'run', progress=False)
    learn = load_run(run, trust_pickle=True)
    assert getattr(learn.model, '_compiled_call_impl', None) is None
    preds = pd.read_parquet(run / 'predictions.parquet')
    ds = pd.read_parquet(toy / 'dataset.parquet')
    logits = predict_logits(learn, [toy / p for p in ds[ds.split == 'valid'].path])
    np.testing.assert_allclose(logits.numpy(), np.stack(preds.logits), atol=1e-4)


def test_two_processes_gloo_under_accelerate_launch(tmp_path):
    """The same `geoloc train` under `accelerate launch` with two CPU processes (gloo): rank 0 writes one run folder.
    Defect 6: with fastai's DistributedDL the ranks lost their prefetch and padded validation batches were counted
    twice. Here 25 validation images (odd, and not a multiple of the batch): each epoch's metrics count each once,
    and both ranks prefetched every batch."""
    odd = toy_dataset(tmp_path / 'odd', n_classes=5, per_class=25, size=80, images='stripes', seed=4)
    n_valid = int((pd.read_parquet(odd / 'dataset.parquet').split == 'valid').sum())
    assert n_valid % 2 == 1 and n_valid % 16
    out = tmp_path / 'ddp'
    accelerate = Path(sys.executable).parent / 'accelerate'
    r = subprocess.run([str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                        '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()),
                        '-m', 'geoloc.cli', 'train', '--dataset', str(odd), '--epochs', '2', '--out', str(out), *CLI_TINY],
                       cwd=ROOT, env=_env(ACCELERATE_USE_CPU='1'), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    s = json.loads((out / 'summary.json').read_text())
    assert s['world'] == 2 and s['epochs'] == 2
    m = pd.read_csv(out / 'metrics.csv')
    assert m.epoch.tolist() == [0, 1]
    assert m.valid_images.tolist() == [n_valid, n_valid]                 # each validation image counted once
    assert m.top1.iloc[-1] == pytest.approx(s['top1'], abs=1e-6)       # the same as over the whole split, once each
    assert r.stdout.count('top-1') == 1                                  # only rank 0 reports
    preds = pd.read_parquet(out / 'predictions.parquet')
    assert len(preds) == n_valid and preds.id.is_unique                  # the whole validation split, once
    loaders = s['loaders']
    assert [x['rank'] for x in loaders] == [0, 1]
    n_train = int((pd.read_parquet(odd / 'dataset.parquet').split == 'train').sum())
    per_rank = -(-n_train // 2) // 16                                    # drop_last batches per rank and epoch
    assert all(x['train_prefetched'] == 2 * per_rank for x in loaders), loaders   # every batch through the prefetcher


def test_cpu_runs_do_not_compile_unless_asked(toy):
    "Defect 7: the fast preset compiled on the CPU (first epoch 99 s, the next 3 s). 'auto' compiles on CUDA only."
    from geoloc.train import CompileModel
    cfg = TrainConfig.fast(bs=16, **TINY)
    assert cfg.compile == 'auto' and cfg.compiles(cuda=True) and not cfg.compiles(cuda=False)
    learn = focalnet_learner(dataloaders(toy, cfg, device='cpu'), cfg)
    assert not any(isinstance(cb, CompileModel) for cb in learn.cbs)
    forced = TrainConfig.fast(bs=16, compile=True, **TINY)
    assert forced.compiles(cuda=False)
    assert any(isinstance(cb, CompileModel) for cb in focalnet_learner(dataloaders(toy, forced, device='cpu'), forced).cbs)
