#!/usr/bin/env bash
# Run once on your own machine (not the GPU one), in the project's root, after `make venv`. It fetches into .whl/
# the wheels a bare GPU machine lacks: every package geoloc-city needs (its dependencies' closure, at the versions
# .venv resolved) except what the GPU image already has (python 3.12 with torch, torchvision, numpy, pandas, scipy,
# scikit-learn, matplotlib, pillow, pyarrow and their own dependencies) and what training and prediction never
# import (spacy, fastapi). .whl/ is git-ignored via .git/info/exclude; it must stay under the 64 MiB carry limit.
# Then, on the GPU machine (the `run` tool with carry [".whl"]): bash tools/gpu-check/gpu_check.sh (about 6 minutes).
set -euo pipefail
[ -d .git ] && [ -f pyproject.toml ] || { echo "run this in the repository root"; exit 1; }
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
pins=$("$PY" - <<'EOF'
import re
from importlib.metadata import distribution, PackageNotFoundError
# on the GPU image already (binary, ABI-tied to its torch and numpy: never replace them)
have = {'torch', 'torchvision', 'triton', 'numpy', 'pandas', 'scipy', 'scikit-learn', 'matplotlib', 'pillow', 'pyarrow',
        'sympy', 'mpmath', 'networkx', 'jinja2', 'markupsafe', 'filelock', 'fsspec', 'typing-extensions', 'setuptools',
        'contourpy', 'cycler', 'fonttools', 'kiwisolver', 'pyparsing', 'python-dateutil', 'pytz', 'tzdata', 'six',
        'packaging', 'threadpoolctl', 'joblib', 'psutil', 'pyyaml', 'tqdm', 'certifi', 'charset-normalizer', 'idna',
        'requests', 'urllib3', 'safetensors', 'huggingface-hub', 'hf-xet', 'timm', 'accelerate', 'regex', 'tokenizers'}
# not imported by training or prediction: fastai's text stack (spacy, ~60 MB) and the web app's (fastapi, pydantic)
unused = {'spacy', 'fastapi', 'pydantic'}
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
todo, seen, out = ['geoloc-city'], set(), []
while todo:
    name = norm(todo.pop())
    if name in seen or name in have or name in unused or name.startswith(('nvidia-', 'cuda-')): continue
    seen.add(name)
    try: d = distribution(name)
    except PackageNotFoundError: continue
    if name != 'geoloc-city': out.append(f'{d.metadata["Name"]}=={d.version}')
    for r in d.requires or []:
        if 'extra ==' in r: continue
        todo.append(re.split(r'[ ;<>=!~\[(]', r, 1)[0])
print(' '.join(sorted(out)))
EOF
)
echo "wheels to fetch: $pins"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
du -sh .whl
echo "ready: on the GPU machine run 'bash tools/gpu-check/gpu_check.sh' with .whl/ carried along (about 6 minutes)"
