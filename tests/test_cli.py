"""The `geoloc` command as a user runs it."""
import subprocess
import sys
from pathlib import Path

import pytest

from geoloc.cli import COMMANDS, main

GEOLOC = [sys.executable, '-m', 'geoloc.cli']


def run(*args, **kw):
    return subprocess.run([*GEOLOC, *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def test_help_lists_every_command():
    r = run('--help')
    assert r.returncode == 0
    for cmd in COMMANDS: assert cmd in r.stdout


def test_unknown_command():
    r = run('crawl-everything')
    assert r.returncode == 2 and 'unknown command' in r.stderr


def test_every_command_has_help():
    for cmd in COMMANDS:
        r = run(cmd, '--help')
        assert r.returncode == 0, (cmd, r.stderr)
        assert r.stdout.startswith(f'usage: geoloc {cmd}')


def test_areas_synthetic(tmp_path):
    r = run('areas', '--city', 'synthetic', '--n', 12, '--seed', 3, '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    assert '12 areas' in r.stdout
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['areas.geojson', 'map.png', 'summary.csv', 'summary.md']


def test_areas_barcelona_from_seeded_cache(tmp_path, bcn_dir):
    cache = tmp_path / 'cache'
    assert run('cache-seed', '--city', 'barcelona', '--src', bcn_dir, '--cache-dir', cache).returncode == 0
    r = run('areas', '--city', 'barcelona', '--level', 'gran-barri', '--cache-dir', cache, '--out', tmp_path / 'gb')
    assert r.returncode == 0, r.stderr
    assert '40 areas' in r.stdout and 'la Vila de Gràcia' in r.stdout


def test_areas_offline_error_is_one_clear_line(tmp_path):
    r = run('areas', '--city', 'barcelona', '--cache-dir', tmp_path, '--out', tmp_path / 'o',
            env={'GEOLOC_MIRROR': 'http://127.0.0.1:9', 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 1
    assert 'Traceback' not in r.stderr and 'put it at' in r.stderr


def test_main_in_process(tmp_path, capsys):
    assert main(['areas', '--city', 'synthetic', '--out', str(tmp_path)]) == 0
    assert (tmp_path / 'map.png').stat().st_size > 10_000
