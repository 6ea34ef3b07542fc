#!/usr/bin/env bash
# Create the virtual environment and install geoloc with its dev extra; skip when nothing changed.
set -euo pipefail
python=${1:-python3}; venv=${2:-.venv}
stamp="$venv/.install-stamp"
# Headless Chromium opens the prediction map in tests/test_predict.py (which skips without it). Nothing is installed
# on the system from here: say how to get it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "note: no chromium on PATH, so the map's browser test will be skipped."
  echo "      To run it: sudo apt-get install chromium   (Debian/Ubuntu; or set GEOLOC_CHROMIUM to a Chromium binary)"
fi
key=$( { cat pyproject.toml; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] \
   && "$venv/bin/python" -c "import geoloc" 2>/dev/null; then
  echo "venv up to date ($venv): install skipped"
  exit 0
fi
echo "Setting up $venv (first run, or pyproject.toml changed): this takes a few minutes"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[dev]"
echo "$key" > "$stamp"
echo "venv ready: $venv"
