"""Make tests/fixtures/boundaries/ from a checkout of github.com/codeforgermany/click_that_hood (public/data).

    python scripts/make-boundary-fixtures.py /path/to/click_that_hood [commit]

Each fixture is the source file's own JSON, cut down by whole features: a file under 100 kB is kept whole; a larger
one keeps its features with invalid geometry and their nearest neighbours (by centroid) until about 80 kB, every kept
feature as the source has it (the same properties and coordinate values, 3-D values and rings as drawn; a
top-level `crs` member is kept; the JSON is re-serialised by Python). Nothing is simplified, so every defect of the source survives. Writes README.md with the sources."""
import json
import subprocess
import sys
from pathlib import Path

import shapely
from shapely.geometry import shape

CITIES = {  # file -> (continent, what it tests)
    'paris': ('Europe', 'arrondissements, accented names'),
    'madrid-districts': ('Europe', 'distritos, MultiPolygons'),
    'rome-rioni': ('Europe', 'rioni, small historic units'),
    'moscow': ('Europe/Asia', 'Cyrillic names, 125 districts'),
    'copenhagen': ('Europe', 'invalid rings in the source'),
    'kaiserslautern': ('Europe', '3-D coordinates'),
    'bogota': ('South America', 'localidades with holes'),
    'montreal': ('North America', 'arrondissements, French names'),
    'milwaukee': ('North America', '3-D coordinates, many neighbourhoods'),
    'seoul': ('Asia', "legacy `crs` member (CRS84), names in `adm_nm`, Korean script"),
    'sydney': ('Oceania', 'ten invalid rings in the source'),
    'wellington': ('Oceania', 'invalid rings, suburbs'),
    'liberia-central': ('Africa', 'legacy `crs` member, districts of central Liberia'),
}
BUDGET = 80_000


def cut(d: dict) -> tuple[dict, str]:
    raw = json.dumps(d, ensure_ascii=False)
    if len(raw.encode()) < 100_000: return d, 'whole file'
    feats = d['features']
    geoms = [shape(f['geometry']) for f in feats]
    bad = [i for i, g in enumerate(geoms) if not g.is_valid]
    seed = bad[0] if bad else 0
    c0 = geoms[seed].centroid
    order = sorted(range(len(feats)), key=lambda i: (i not in bad, geoms[i].centroid.distance(c0)))
    keep, size = [], 0
    for i in order:
        n = len(json.dumps(feats[i], ensure_ascii=False).encode())
        if keep and size + n > BUDGET and i not in bad: continue
        keep.append(i); size += n
    keep.sort()
    out = {k: v for k, v in d.items() if k != 'features'} | {'features': [feats[i] for i in keep]}
    return out, f'{len(keep)} of {len(feats)} features (those with invalid geometry and their neighbours), unchanged'


def main(repo: str, commit: str = 'HEAD'):
    out = Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'boundaries'
    out.mkdir(parents=True, exist_ok=True)
    sha = subprocess.run(['git', '-C', repo, 'rev-parse', commit], capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    for city, (continent, what) in CITIES.items():
        text = subprocess.run(['git', '-C', repo, 'show', f'{sha}:public/data/{city}.geojson'], capture_output=True, check=True).stdout
        meta = json.loads(subprocess.run(['git', '-C', repo, 'show', f'{sha}:public/data/{city}.metadata.json'],
                                         capture_output=True, check=True).stdout or b'{}')
        d, how = cut(json.loads(text))
        (out / f'{city}.geojson').write_text(json.dumps(d, ensure_ascii=False) + '\n', encoding='utf-8')
        rows.append(f"| `{city}.geojson` | {meta.get('locationName', city)} ({continent}) | {what} | {how} | "
                    f"{meta.get('dataTitle', '')} ({meta.get('dataUrl', '')}) |")
    (out / 'README.md').write_text(f"""# Real boundary files of cities

Neighbourhood and district layers of real cities on five continents, from
github.com/codeforgermany/click_that_hood at commit {sha} (`public/data/<name>.geojson`;
each file's original source is in the last column, from its `.metadata.json`). Made by
`scripts/make-boundary-fixtures.py`: files under 100 kB are whole; larger ones keep whole features, those with
invalid geometry first, then their nearest neighbours, up to about 80 kB. No coordinate is changed (the JSON is re-serialised by Python), so the
defects of the sources (invalid rings, 3-D coordinates, legacy `crs` members, other name properties) are kept.
`tests/test_boundaries.py` checks geoloc's areas contract on every one of them.

| file | city | what it tests | kept | original source |
|---|---|---|---|---|
""" + '\n'.join(rows) + '\n')
    print(f'{len(rows)} fixtures -> {out}')


if __name__ == '__main__': main(*sys.argv[1:])
