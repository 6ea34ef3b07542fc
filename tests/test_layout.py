"""The package's shape, checked: imports only run down the flow, no private name crosses modules, modules stay
small, every command's help is fast, the shipped configs load, and `demo --fresh` deletes only what a demo made."""
import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoloc.cli import COMMANDS
from geoloc.files import MARKER, FileError, mark_folder, remove_owned

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'geoloc'
GEOLOC = [sys.executable, '-m', 'geoloc.cli']

# The flow, top to bottom: a module may import only modules at its own rank or above it. The stand-ins sit
# after the labelling stage (their toy datasets are written with its writer) and before training.
FLOW = ['files', 'net', 'osm', 'sim.city', 'geojson', 'crawlio', 'flickr', 'mapillary', 'splits', 'labeling', 'images', 'sim', 'data',
        'metrics', 'weights', 'retrieval', 'recipe', 'train', 'analysis', 'photos', 'outputs', 'predict', 'serve', 'watch', 'pipeline', 'study', 'cli']


def rank(mod: str) -> int:
    "Rank of a dotted module name inside geoloc ('sim.world' ranks as 'sim', 'sim.city' as itself)."
    if mod in FLOW: return FLOW.index(mod)
    if mod == 'emulator' or mod.startswith('sim'): return FLOW.index('sim')
    raise AssertionError(f'geoloc.{mod} is not placed in the flow: add it to FLOW in {__file__}')


def modules():
    "Every module of the package but the generated index: (dotted name inside geoloc, path)."
    for p in sorted(PKG.rglob('*.py')):
        if p.name == '_modidx.py': continue
        parts = p.relative_to(PKG).with_suffix('').parts
        if parts[-1] == '__init__': parts = parts[:-1]
        yield '.'.join(parts), p


def geoloc_imports(name: str, path: Path):
    "(imported module inside geoloc, imported names, line) for every import in the file, at any depth."
    pkg = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                target = '.'.join([*base, *(node.module.split('.') if node.module else [])])
            elif node.module and (node.module == 'geoloc' or node.module.startswith('geoloc.')):
                target = node.module[len('geoloc.'):] if node.module != 'geoloc' else ''
            else: continue
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('geoloc.'): yield a.name[len('geoloc.'):], [], node.lineno


def test_imports_run_down_the_flow_and_keep_private_names_private():
    up, private = [], []
    for name, path in modules():
        if name in ('', 'cli'): continue  # the package's lazy names and the command dispatcher reach every stage
        for target, names, line in geoloc_imports(name, path):
            if not target: continue
            if target.startswith(name + '.') or name.startswith(target + '.') and target == 'sim': pass
            elif rank(target) > rank(name): up.append(f'geoloc/{path.relative_to(PKG)}:{line} imports geoloc.{target}')
            if target != name:
                private += [f'geoloc/{path.relative_to(PKG)}:{line} imports {n} from geoloc.{target}'
                            for n in names if n.startswith('_') and n != '__version__']
    assert not up, 'imports that run up the flow:\n' + '\n'.join(up)
    assert not private, 'private names crossing modules:\n' + '\n'.join(private)


def test_the_walk_sees_real_imports():
    "The walk itself: it finds the imports that do exist, so a silent parser cannot pass the test above."
    found = {(n, t) for n, p in modules() for t, _, _ in geoloc_imports(n, p)}
    assert {('pipeline', 'labeling'), ('predict', 'data'), ('train', 'data'), ('sim.toy', 'labeling'),
            ('mapillary', 'crawlio')} <= found
    assert rank('sim.world') == rank('sim') < rank('data') and rank('sim.city') < rank('geojson')


def test_modules_stay_small():
    sizes = {name: len(p.read_text().splitlines()) for name, p in modules()}
    big = {n: s for n, s in sizes.items() if s > 600}
    assert not big, f'modules over 600 lines: {big}'


def test_every_module_is_listed_in_the_package_docs():
    "nbdev lists a module in the package docstring and llms.txt only when its docstring says more than one line."
    import geoloc
    listed = (ROOT / 'nbs' / 'llms.txt').read_text()
    missing = [n for n, _ in modules() if n and f'`geoloc.{n}`' not in geoloc.__doc__]
    assert not missing, f'modules missing from the package docstring: {missing}'
    assert not [n for n, _ in modules() if n and f'`geoloc.{n}`' not in listed]
    assert 'Docs: http' not in geoloc.__doc__ + listed   # no links to a site that does not exist


def _best_of(cmd, n=2):
    "Fastest of n runs, in seconds (a busy shared machine adds noise, never speed)."
    best = float('inf')
    for _ in range(n):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
        best = min(best, time.perf_counter() - t)
        assert r.returncode == 0 and 'usage' in r.stdout.lower(), r.stderr
    return best


def test_help_is_fast_for_every_command():
    "torch, fastai and geopandas load only when a command runs: `geoloc --help` and each COMMAND --help < 1.5 s."
    times = {'--help': _best_of([*GEOLOC, '--help'])}
    for c in COMMANDS: times[c] = _best_of([*GEOLOC, c, '--help'])
    slow = {c: round(t, 2) for c, t in times.items() if t > 1.5}
    assert not slow, f'help slower than 1.5 s: {slow} (all: {times})'


def test_help_defaults_agree_between_commands():
    "Every command that takes --city defaults to the same city."
    from geoloc.cli import command_parser
    cities = {c: command_parser(c).get_default('city') for c in COMMANDS if c not in ('demo', 'emulator')}
    cities = {c: v for c, v in cities.items() if v is not None}
    assert cities and set(cities.values()) == {'barcelona'}, cities


@pytest.mark.parametrize('path', sorted((ROOT / 'configs').glob('*.*')), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from geoloc.pipeline import load_config
    from geoloc.study import load_study
    if path.name.startswith('study-'):
        cfg = load_study(path)
        assert cfg.splits and cfg.sources and cfg.train['preset'] in ('fast', 'paper')
    else:
        cfg = load_config(path)
        assert cfg.city and cfg.train['preset'] in ('fast', 'paper')
    text = path.read_text()
    assert 'MLY|' not in text.replace('MLY|...', '') and 'api_key' not in text   # keys stay in the environment


def test_configs_include_the_demo_and_barcelona():
    from geoloc.pipeline import demo_config, load_config
    names = {p.name for p in (ROOT / 'configs').iterdir()}
    assert {'demo.toml', 'barcelona.toml'} <= names
    demo, built_in = load_config(ROOT / 'configs' / 'demo.toml'), demo_config()
    assert (demo.city, demo.emulator, demo.train, demo.split) == (built_in.city, built_in.emulator, built_in.train,
                                                                   built_in.split)


# ------------------------------------------------------------------------------------------------ deleting
def _demo_fresh(out, cwd):
    return subprocess.run([*GEOLOC, 'demo', '--fresh', '--quiet', '--out', str(out)], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_demo_fresh_refuses_a_folder_it_did_not_make(tmp_path):
    precious = tmp_path / 'thesis'
    (precious / 'chapters').mkdir(parents=True)
    (precious / 'chapters' / 'one.tex').write_text('years of work')
    r = _demo_fresh(precious, tmp_path)
    assert r.returncode == 1 and 'nothing was deleted' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (precious / 'chapters' / 'one.tex').read_text() == 'years of work'


def test_demo_fresh_refuses_the_working_directory(tmp_path):
    mark_folder(tmp_path, 'demo')   # even a folder a demo made is never deleted while it is the working directory
    (tmp_path / 'keep.txt').write_text('x')
    r = _demo_fresh('.', tmp_path)
    assert r.returncode == 1 and 'nothing was deleted' in r.stderr
    assert (tmp_path / 'keep.txt').exists()


def test_demo_fresh_refuses_a_file(tmp_path):
    f = tmp_path / 'notes.txt'
    f.write_text('mine')
    r = _demo_fresh(f, tmp_path)
    assert r.returncode == 1 and 'not a folder that geoloc made' in r.stderr
    assert f.read_text() == 'mine'


def test_remove_owned_deletes_only_its_own_kind(tmp_path):
    made = tmp_path / 'run'
    mark_folder(made, 'pipeline')
    (made / 'x').write_text('1')
    with pytest.raises(FileError, match='not made by geoloc demo'): remove_owned(made, 'demo')
    assert (made / MARKER).exists()
    assert remove_owned(made, 'pipeline') and not made.exists()
    assert remove_owned(made, 'pipeline') is False   # absent: nothing to do
    link = tmp_path / 'link'
    mark_folder(tmp_path / 'target', 'demo')
    os.symlink(tmp_path / 'target', link)
    with pytest.raises(FileError, match='not a folder'): remove_owned(link, 'demo')
    assert (tmp_path / 'target').exists()
