#!/usr/bin/env bash
# geoloc GPU validation, one bounded run on one H200 (about 6 minutes of command time; see BUDGET, NB_TIMEOUT).
# From a checkout, with the wheels of tools/gpu-check/prepare_here.sh in .whl/ (the `run` tool: carry [".whl"]):
#   on the GPU machine: bash tools/gpu-check/gpu_check.sh   (~6 min)
# The device machine has no network: `make` cannot build .venv there. Its python3 (torch, torchvision, timm,
# accelerate, pandas, pyarrow, scipy...) is used, with fastai & co and geopandas & co installed from .whl/.
# Locally (no GPU): bash tools/gpu-check/gpu_check.sh --dry   (tests the script; numbers meaningless)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$HERE; while [ ! -f "$REPO/pyproject.toml" ] && [ "$REPO" != / ]; do REPO=$(dirname "$REPO"); done
cd "$REPO"
OUT=${OUT:-$(mktemp -d /tmp/gpucheck-out.XXXX)}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-300}          # seconds for gpu_check.py's stages (each stage is skipped when it would not fit)
NB_TIMEOUT=${NB_TIMEOUT:-90}  # seconds for each notebook (04 and 06 run side by side, after the stages)
t0=$(date +%s)
if ! "$PY" -c "import fastai, geopandas, pillow_heif" 2>/dev/null && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export GEOLOC_REPO=$REPO MPLBACKEND=Agg PYTHONWARNINGS=ignore
echo "== $(date -u +%FT%TZ) repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')), out $OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
"$PY" -c "import geoloc.train, geoloc.predict, fastai; print('imports ok')" || { echo "imports failed"; exit 4; }

# 1. the measured stages (data, decode, race, train, predict), bounded by BUDGET
timeout $((BUDGET + 60)) "$PY" "$HERE/gpu_check.py" --budget "$BUDGET" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log" \
  | grep -v -E "^\s*$" | tail -n 400 >/dev/null
grep -E "Traceback|Error" "$OUT/gpu_check.log" | tail -n 8

# 2. the notebooks' `#| cuda` cells (and everything before them), side by side, each under NB_TIMEOUT
if [[ " $* " == *" --dry "* ]]; then NBFLAGS=""; else NBFLAGS="cuda"; fi
for nb in 04_train_focalnet 06_predict; do
  ( cd "$REPO" && timeout "$NB_TIMEOUT" "$PY" "$HERE/run_nb.py" "nbs/$nb.ipynb" --flags "$NBFLAGS" --only-upto-flagged > "$OUT/nb_$nb.txt" 2>&1
    rc=$?; [ $rc -eq 124 ] && echo "TIMEOUT after ${NB_TIMEOUT} s (last cells above)" >> "$OUT/nb_$nb.txt" ) &
done
wait
for nb in 04_train_focalnet 06_predict; do
  if ! grep -q "^PASS" "$OUT/nb_$nb.txt" && grep -q "^FAIL" "$OUT/nb_$nb.txt" \
     && ! grep -q "flags \[.cuda.\]" "$OUT/nb_$nb.txt" && [ $(( $(date +%s) - t0 )) -lt $((BUDGET + NB_TIMEOUT + 60)) ]; then
    # a CPU-meant cell failed on the GPU machine before the cuda cell: run again with the other cells on the CPU
    echo "(rerun of $nb with non-cuda cells on the CPU)" >> "$OUT/nb_$nb.txt"
    ( cd "$REPO" && timeout "$NB_TIMEOUT" "$PY" "$HERE/run_nb.py" "nbs/$nb.ipynb" --flags "$NBFLAGS" --only-upto-flagged --cpu-default \
        >> "$OUT/nb_$nb.txt" 2>&1 || true )
  fi
  echo "---- $nb (tail)"; grep -v -i warn "$OUT/nb_$nb.txt" | grep -v "^\s" | tail -n 4
done

# 3. one table
"$PY" "$HERE/gpu_check.py" --summary "$OUT/gpu_check.json" --nb "$OUT/nb_04_train_focalnet.txt" "$OUT/nb_06_predict.txt"
echo "== total $(( $(date +%s) - t0 )) s; logs in $OUT"
