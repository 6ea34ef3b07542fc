"""geoloc.pipeline: configs (YAML, TOML, mistakes), a run against API URLs with keys from the environment, and the
`geoloc pipeline` command killed with SIGKILL during training and run again to completion."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from geoloc.sim import FLICKR_KEY, MAPILLARY_TOKEN, Emulator, synthetic_world
from geoloc.sim import synthetic_city
from geoloc.pipeline import PipelineConfig, load_config, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
GEOLOC = [sys.executable, '-m', 'geoloc.cli']
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
TINY_TRAIN = ("{arch: focalnet_pico_srf, epochs: EPOCHS, warmup_epochs: 1, lr: 0.002, lr_batch: 32, bs: 32, size: 32, "
              "resize: 40, mixup: 0, cutmix: 0, randaug: '', reprob: 0, workers: 0}")


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_config_files_and_mistakes(tmp_path):
    (tmp_path / 'a.yaml').write_text("name: x\ncity: synthetic\ndistricts: 5\nflickr: null\n"
                                     "split: {how: spatial, block_m: 300}\ntrain: {epochs: 4, bs: 16}\ncompare: []\n")
    (tmp_path / 'a.toml').write_text('name = "x"\ncity = "synthetic"\ndistricts = 5\ncompare = []\n'
                                     'split = {how = "spatial", block_m = 300}\ntrain = {epochs = 4, bs = 16}\n')
    a = load_config(tmp_path / 'a.yaml')
    assert a.flickr is None and a.mapillary['token_env'] == 'MAPILLARY_TOKEN' and a.split['valid_pct'] == 0.1
    assert a.split == {'how': 'spatial', 'valid_pct': 0.1, 'seed': 0, 'block_m': 300, 'buffer_m': 100}
    assert load_config(tmp_path / 'a.toml') == PipelineConfig(**{**a.__dict__, 'flickr': {}})
    for text, msg in [("citty: x\n", "unknown setting(s) ['citty']"), ("download: {sise: 64}\n", "unknown key(s) ['sise']"),
                      ("mapillary: null\nflickr: null\n", 'both sources are off'), ("split: [1]\n", 'must be a mapping'),
                      ("train: {preset: slow}\n", "preset must be one of"), ("a: [\n", 'not valid YAML')]:
        (tmp_path / 'b.yaml').write_text(text)
        with pytest.raises(ValueError, match=msg.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(').replace(')', r'\)')):
            load_config(tmp_path / 'b.yaml')
    with pytest.raises(FileNotFoundError, match='not found'): load_config(tmp_path / 'none.yaml')


def test_real_api_mode_keys_from_environment(tmp_path, monkeypatch):
    "Without an emulator section the crawls go to the configured URLs with the keys of the named variables; no key is stored."
    areas = synthetic_city(5, seed=4)
    with Emulator(synthetic_world(areas, mapillary=300, flickr=80, seed=4)) as emu:
        cfg = PipelineConfig(name='api', out=str(tmp_path / 'run'), city='synthetic', districts=5, seed=4,
                             mapillary={'api_url': emu.mapillary_url, 'token_env': 'TEST_MLY'},
                             flickr={'api_url': emu.flickr_url, 'key_env': 'TEST_FLICKR', 'calls_per_hour': None},
                             split={'how': 'sequence', 'valid_pct': 0.2}, compare=[])
        monkeypatch.delenv('TEST_MLY', raising=False)
        with pytest.raises(ValueError, match='needs the environment variable TEST_MLY'):
            run_pipeline(cfg, progress=False, until='mapillary')
        monkeypatch.setenv('TEST_MLY', MAPILLARY_TOKEN); monkeypatch.setenv('TEST_FLICKR', FLICKR_KEY)
        res = run_pipeline(cfg, progress=False, until='dataset')
    assert res.status.tolist() == ['skipped', 'ran', 'ran', 'ran'], res  # the areas were made before the key was missed
    ds = pd.read_parquet(tmp_path / 'run' / 'dataset' / 'dataset.parquet')
    assert set(ds.source) == {'mapillary', 'flickr'} and len(ds) == 380 and set(ds.split) == {'train', 'valid'}
    for f in (tmp_path / 'run').rglob('*'):
        if f.is_file(): assert b'4242424242424242' not in f.read_bytes() and FLICKR_KEY.encode() not in f.read_bytes(), f


def _config(tmp_path, epochs):
    (tmp_path / 'tiny.yaml').write_text(f"""
name: kill test
out: out
city: click_that_hood:bogota
emulator: {{mapillary: 600, flickr: 100, seed: 1}}
split: {{how: sequence, valid_pct: 0.2}}
download: {{size: 40, workers: 8}}
train: {TINY_TRAIN.replace('EPOCHS', str(epochs))}
compare: []
predict: {{photos: 10}}
device: cpu
threads: 1
""")
    return tmp_path / 'tiny.yaml'


def test_cli_killed_during_training_resumes(tmp_path):
    "A real city other than Barcelona (Bogota's 19 localidades, shipped with geoloc: offline), end to end, killed once."
    cfg = _config(tmp_path, epochs=5)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'GEOLOC_CACHE': str(tmp_path / 'cache'),
           'GEOLOC_MIRROR': 'http://127.0.0.1:9'}   # nothing listens there: no network
    metrics = tmp_path / 'out' / 'runs' / 'sequence' / 'metrics.csv'
    p = subprocess.Popen([*GEOLOC, 'pipeline', str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                         cwd=tmp_path)  # a relative out folder, as users write it
    t0 = time.time()
    while time.time() - t0 < 240 and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3: break  # header + two epochs
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-3000:]
    p.send_signal(signal.SIGKILL); p.wait(30)
    done = len(metrics.read_text().splitlines()) - 1
    assert 2 <= done < 5
    r = subprocess.run([*GEOLOC, 'pipeline', str(cfg)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    for stage in ('areas', 'mapillary', 'flickr', 'dataset', 'download'): assert f'] {stage}: skipped' in r.stdout
    assert '] train: focalnet_pico_srf' in r.stdout and '] predict: 10 of 10 photos placed' in r.stdout
    s = json.loads((tmp_path / 'out' / 'runs' / 'sequence' / 'summary.json').read_text())
    assert s['resumed_from'] >= 2 and s['epochs'] == 5
    assert pd.read_csv(metrics).epoch.tolist() == list(range(5))  # each epoch once
    report = (tmp_path / 'out' / 'report' / 'README.md').read_text()
    assert '## Table 1' in report and 'predictions/map.html' in report and '10 held-out photos' in report
    again = subprocess.run([*GEOLOC, 'pipeline', str(cfg), '--quiet'], capture_output=True, text=True, env=env, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == '', again.stderr[-2000:]
    state = json.loads((tmp_path / 'out' / 'pipeline.json').read_text())
    assert state['stages']['train']['status'] == 'ran' and state['last_run_seconds'] < 60
    assert state['stages']['areas']['summary'] == '19 districts of click_that_hood:bogota'
    assert 'Usaquen' in report and 'Ciudad Bolivar' in report   # the report is about Bogota's localidades
    bad = subprocess.run([*GEOLOC, 'pipeline', str(cfg), '--until', 'nope'], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and 'is not a stage' in bad.stderr and 'Traceback' not in bad.stderr
