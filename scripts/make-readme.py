#!/usr/bin/env python3
"""Render nbs/index.ipynb into README.md (nbdev's own nbdev-readme needs Quarto, which this project does not ship).

Markdown cells are copied; code cells become fenced Python (directive lines dropped, `#| hide` cells skipped),
followed by their saved text output. `--check` exits 1 when README.md is not what the notebook renders to.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith('#|')]
        if any(d.split()[1:2] in (['hide'], ['default_exp']) for d in directives if len(d.split()) > 1): continue
        body = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if not body: continue
        if c['cell_type'] == 'markdown':
            parts.append(body)
            continue
        parts.append(f'```python\n{body}\n```')
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if 'text/markdown' in data: parts.append(''.join(data['text/markdown']).strip())
            elif 'text/plain' in data: parts.append('```\n' + ''.join(data['text/plain']).rstrip() + '\n```')
            elif o.get('output_type') == 'stream' and o.get('name') == 'stdout':
                parts.append('```\n' + ''.join(o['text']).rstrip() + '\n```')
    header = '<!-- Generated from nbs/index.ipynb by scripts/make-readme.py: edit the notebook, not this file. -->'
    return header + '\n\n' + '\n\n'.join(parts) + '\n'


def main():
    text = render(ROOT / 'nbs' / 'index.ipynb')
    readme = ROOT / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            print('README.md is out of date with nbs/index.ipynb: run `python scripts/make-readme.py` and commit.')
            return 1
        print('README check: README.md matches nbs/index.ipynb')
        return 0
    readme.write_text(text)
    print(f'wrote {readme}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
