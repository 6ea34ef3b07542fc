#!/usr/bin/env bash
# Fail when nbdev-export changes the package: the notebooks and geoloc/ must already agree.
set -euo pipefail
bin=${1:-.venv/bin}
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
cp -r geoloc "$snap/geoloc"
"$bin/nbdev-export"
if ! diff -r -x __pycache__ "$snap/geoloc" geoloc >"$snap/diff.txt"; then
  echo "nbdev-export changed the package: the notebooks and geoloc/ were out of sync."
  echo "Run nbdev-export, review and commit the result. Differences:"
  head -100 "$snap/diff.txt"
  exit 1
fi
echo "export check: package in sync with notebooks"
"$bin/python" scripts/make-readme.py --check
