"""nbdev's doc processing (what `nbdev-proc-nbs` runs) on every notebook, failing on any warning or error.

`nbdev-proc-nbs` itself first tries to install quarto with sudo when it is missing; this script runs the same
processing (`nbdev.serve.proc_nbs` with nbdev's `FilterDefaults` processors) without touching the system, one
notebook at a time in each of two worker processes, so that every warning is caught and named."""
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastcore.nbio import read_nb, write_nb
from nbdev.config import get_config
from nbdev.processors import FilterDefaults


def check(nb_path: Path, out: Path) -> list:
    "Warnings and errors from processing one notebook as the docs build does (`nbdev.serve_drv.exec_nb`)."
    problems = []
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter('always')
        try:
            nb = read_nb(nb_path)
            FilterDefaults()(nb)
            write_nb(nb, out/nb_path.name)
        except Exception as e:  # an exception is what breaks the docs build: report it with the notebook's name
            problems.append(f'{type(e).__name__}: {e}')
    problems += [f'{w.category.__name__}: {str(w.message).strip()}' for w in got
                 if 'Found cells containing imports' in str(w.message) or issubclass(w.category, UserWarning)]
    return problems


def main():
    "With notebook paths: check those, in this process. Without: every notebook, in two worker processes (as nbdev's doc workers, which are reused across notebooks)."
    if sys.argv[1:]:
        out, bad = Path(tempfile.mkdtemp(prefix='geoloc-docs-')), 0
        os.environ['IN_TEST'] = '1'  # as nbdev's doc workers set it
        for p in map(Path, sys.argv[1:]):
            probs = check(p, out)
            for pr in probs: print(f'{p.name}: {pr}', file=sys.stderr)
            bad += bool(probs)
        shutil.rmtree(out, ignore_errors=True)
        sys.exit(1 if bad else 0)
    cfg = get_config()
    nbs = sorted(p for p in Path(cfg.nbs_path).glob('*.ipynb') if not p.name.startswith(('_', '.')))
    # each worker pays the imports (torch, fastai, geopandas) once; a notebook that registers a model in timm's
    # global registry gets a process of its own (a second registration in a shared one warns about the sharing)
    solo = [p for p in nbs if '@register_model' in p.read_text()]
    rest = [p for p in nbs if p not in solo]
    chunks = [[p] for p in solo] + [rest[i::2] for i in range(2)]
    with ThreadPoolExecutor(2) as ex:
        rcs = list(ex.map(lambda c: subprocess.run([sys.executable, __file__, *map(str, c)]).returncode, chunks))
    if any(rc != 0 for rc in rcs):
        print(f'doc processing: some of the {len(nbs)} notebooks have problems (named above).', file=sys.stderr)
        sys.exit(1)
    print(f'doc processing: {len(nbs)} notebooks clean')


if __name__ == '__main__':
    main()
