"""The `geoloc` command: one subcommand per pipeline stage.

Hand-written dispatcher. Each stage's notebook exports a plain function whose docments become the
subcommand's options (through `fastcore.script.anno_parser`); this module only maps names to those
functions and imports a stage when its subcommand runs, so `geoloc --help` stays fast.
"""
from __future__ import annotations

import importlib
import sys

from fastcore.script import anno_parser

__all__ = ['COMMANDS', 'main']

# name -> (module:function, one-line help, positional parameters). Stages add their line as they land.
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    'areas': ('geoloc.geojson:areas_cli', "Load a city's areas (districts, neighbourhoods): summary table + map PNG", []),
    'cache-seed': ('geoloc.geojson:cache_seed_cli', "Put boundary files you already have into the offline cache", []),
    'mapillary': ('geoloc.mapillary:mapillary_cli', "Crawl every Mapillary image of a city (recursive bbox search; resumable)", []),
    'flickr': ('geoloc.flickr:flickr_cli', "Crawl a city's geotagged Flickr photos (every one, or the paper's keyword searches)", []),
    'emulator': ('geoloc.emulator:emulator_cli', "Serve local Mapillary and Flickr API stand-ins over a synthetic world", []),
    'label': ('geoloc.labeling:label_cli', "Label crawl records by district and clean them into a dataset folder", ['records']),
    'split': ('geoloc.labeling:split_cli', "Add a train/valid split (random, sequence, spatial) to a dataset; report leakage", []),
    'download': ('geoloc.labeling:download_cli', "Download, verify and resize a dataset's images (resumable; failures kept with reasons)", []),
    'train': ('geoloc.train:train_cli', "Train a FocalNet district classifier on a dataset folder (paper or fast recipe)", []),
    'analyze': ('geoloc.analysis:analyze_cli', "The paper's tables and figures and honest geolocation metrics of runs (PNG, markdown, CSV)", ['runs']),
    'predict': ('geoloc.predict:predict_cli', "Place new photos (files, folders, URLs) in a run's districts: CSV, GeoJSON and an HTML map", ['run', 'images']),
    'pipeline': ('geoloc.pipeline:pipeline_cli', "Run the whole study from a YAML/TOML config: crawl, label, split, download, train, analyse, predict (resumable)", ['config']),
    'demo': ('geoloc.pipeline:demo_cli', "The whole study in one command, offline and without keys: emulated APIs, a small FocalNet, a report", []),
}


def _usage() -> str:
    from geoloc import __version__
    w = max(map(len, COMMANDS))
    rows = '\n'.join(f'  {k.ljust(w)}  {h}' for k, (_, h, _p) in COMMANDS.items())
    return (f'usage: geoloc COMMAND [options]   (geoloc {__version__})\n\n'
            f'Geolocate outdoor photos inside a city, one stage per command:\n\n{rows}\n\n'
            'Run `geoloc COMMAND --help` for the options of one command.')


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
    target, _help, pos = COMMANDS[cmd]
    func = _load(target)
    parser = anno_parser(func, prog=f'geoloc {cmd}', pos=pos)
    args = vars(parser.parse_args(rest))
    args.pop('pdb', None), args.pop('xtra', None)
    try:
        res = func(**args)
    except (FileNotFoundError, ValueError, RuntimeError, PermissionError, ConnectionError) as e:
        # Errors a user can cause carry their own explanation: show it without a traceback.
        print(f'geoloc {cmd}: {e}', file=sys.stderr)
        return 1
    return res if isinstance(res, int) else 0


if __name__ == '__main__':
    sys.exit(main())
