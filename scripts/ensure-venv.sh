#!/usr/bin/env bash
# Create the virtual environment and install geoloc with its dev extra; skip when nothing changed.
set -euo pipefail
python=${1:-python3}; venv=${2:-.venv}
stamp="$venv/.install-stamp"
# Headless Chromium opens the prediction map in tests/test_predict.py (which skips without it); best effort, quiet.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium (headless browser for the map test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null 2>&1 || echo "chromium could not be installed: the map's browser test will be skipped"
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
