"""The `geoloc` command: one subcommand per pipeline stage.

Hand-written dispatcher. Each stage's notebook exports a plain function whose docments become the subcommand's
options (through `fastcore.script.anno_parser`). To keep `geoloc --help` and every `geoloc COMMAND --help` fast
(torch and fastai take seconds to import), the parser is built from the function's *source*: its signature is
compiled on its own, without the module's imports, so a command's stage is imported only when the command runs.
Defaults of command functions are therefore literals (a test checks that every command's parser builds this way).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import linecache
import sys
import typing
from pathlib import Path

__all__ = ['COMMANDS', 'command_parser', 'main']

# name -> (module:function, one-line help, positional parameters)
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    'areas': ('geoloc.geojson:areas_cli', "Load a city's areas (districts, neighbourhoods): summary table + map PNG", []),
    'cache-seed': ('geoloc.geojson:cache_seed_cli', "Put boundary files you already have into the offline cache", []),
    'mapillary': ('geoloc.mapillary:mapillary_cli', "Crawl every Mapillary image of a city (recursive bbox search; resumable)", []),
    'flickr': ('geoloc.flickr:flickr_cli', "Crawl a city's geotagged Flickr photos (every one, or the paper's keyword searches)", []),
    'label': ('geoloc.labeling:label_cli', "Label crawl records by district, clean and split them into a dataset folder", ['records']),
    'split': ('geoloc.labeling:split_cli', "Split a dataset again (random, sequence, spatial); report how much each split leaks", []),
    'download': ('geoloc.images:download_cli', "Download, verify and resize a dataset's images (resumable; failures kept with reasons)", []),
    'train': ('geoloc.train:train_cli', "Train a FocalNet district classifier on a dataset folder (paper or fast recipe)", []),
    'analyze': ('geoloc.analysis:analyze_cli', "The paper's tables and figures and honest geolocation metrics of runs (PNG, markdown, CSV)", ['runs']),
    'predict': ('geoloc.predict:predict_cli', "Place new photos (files, folders, URLs) in a run's districts: CSV, GeoJSON and an HTML map", ['run', 'images']),
    'serve': ('geoloc.serve:serve_cli', "The web app: drop photos on a page, see them on the city's map, export CSV/GeoJSON/KML (FastAPI)", ['runs']),
    'watch': ('geoloc.watch:watch_cli', "Place photos as they arrive in a folder; append them to OUT (restart-safe, Ctrl-C stops)", ['folder']),
    'pipeline': ('geoloc.pipeline:pipeline_cli', "Run the whole study from a YAML/TOML config: crawl, label, split, download, train, analyse, predict (resumable)", ['config']),
    'study': ('geoloc.study:study_cli', "Run a study from a config: k folds x splits x sources x models, resumable; tables with 95% intervals", ['config']),
    'demo': ('geoloc.pipeline:demo_cli', "The whole study in one command, offline and without keys: API stand-ins, a small FocalNet, a report", []),
    'emulator': ('geoloc.sim.emulator:emulator_cli', "Serve local Mapillary and Flickr API stand-ins over a synthetic world", []),
}


def _usage() -> str:
    from geoloc import __version__
    w = max(map(len, COMMANDS))
    rows = '\n'.join(f'  {k.ljust(w)}  {h}' for k, (_, h, _p) in COMMANDS.items())
    return (f'usage: geoloc COMMAND [options]   (geoloc {__version__})\n\n'
            f'Geolocate outdoor photos inside a city, one stage per command:\n\n{rows}\n\n'
            'Run `geoloc COMMAND --help` for the options of one command.')


def _stub(target: str):
    "The command function `module:function` compiled from its own source alone: same signature, docstring, docments."
    mod, fn = target.split(':')
    spec = importlib.util.find_spec(mod)
    if spec is None or not spec.origin: raise ImportError(f'cannot find {mod}')
    src = Path(spec.origin).read_text(encoding='utf-8')
    node = next((n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == fn), None)
    if node is None: raise ImportError(f'{mod} has no function {fn}')
    lines = src.splitlines(keepends=True)
    start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    body0 = node.body[0]
    doc = ast.get_docstring(node)
    head = ''.join(lines[start:body0.lineno - 1]) if not doc else ''.join(lines[start:body0.end_lineno])
    code = head + ('    pass\n' if doc else '    pass\n')
    fname = f'<geoloc-cli {target}>'
    linecache.cache[fname] = (len(code), None, code.splitlines(keepends=True), fname)  # docments read the source
    from fastcore.script import store_false, store_true  # noqa: F401 (names the signatures may use)
    ns = {'__name__': mod, 'Annotated': typing.Annotated, 'store_true': store_true, 'store_false': store_false}
    exec(compile(code, fname, 'exec'), ns)
    return ns[fn]


def command_parser(cmd: str):
    "The argparse parser of `geoloc CMD`, built without importing the stage."
    from fastcore.script import anno_parser
    target, _help, pos = COMMANDS[cmd]
    return anno_parser(_stub(target), prog=f'geoloc {cmd}', pos=pos)


def _load(target: str):
    mod, fn = target.split(':')
    return getattr(importlib.import_module(mod), fn)


def main(argv: list[str] | None = None) -> int:
    "Entry point of the `geoloc` console script."
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help', 'help'):
        print(_usage())
        return 0
    if argv[0] in ('-V', '--version'):
        from geoloc import __version__
        print(f'geoloc {__version__}')
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"geoloc: unknown command {cmd!r}. Commands: {', '.join(COMMANDS)}. See `geoloc --help`.",
              file=sys.stderr)
        return 2
    args = vars(command_parser(cmd).parse_args(rest))
    args.pop('pdb', None), args.pop('xtra', None)
    func = _load(COMMANDS[cmd][0])
    try:
        res = func(**args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError, ConnectionError) as e:
        # Errors a user can cause carry their own explanation: show it without a traceback.
        print(f'geoloc {cmd}: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'geoloc {cmd}: interrupted; run the same command again to resume.', file=sys.stderr)
        return 130
    return res if isinstance(res, int) else 0


if __name__ == '__main__':
    sys.exit(main())
