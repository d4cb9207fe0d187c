#!/usr/bin/env bash
# Check migfuse on the oldest Python this machine has, when it is older than the main venv's: CI runs
# it (.ci/run) so that a call newer than the floor cannot pass on the venv's newer Python alone.
#
#   bash scripts/floor_check.sh                                   # /usr/bin/python3 (Debian 12: 3.11.2)
#   MIGFUSE_FLOOR_PYTHON=/path/to/python3.11 bash scripts/floor_check.sh
#
# In a light venv of that Python (MIGFUSE_FLOOR_VENV, default .venv-floor; kept, so a rerun is quick)
# with the core dependencies (pip install -e .), pytest and the spreadsheet libraries, no torch:
#   1. every migfuse module is imported (those that need an extra such as torch are listed as skipped),
#   2. the tar / zip / file-handling tests run (FLOOR_TESTS below).
# Skipped, and said so, when that Python is absent, not older than the venv's, or below python_requires.
# tests/test_python_floor.py scans the code for newer calls (vermin) on any Python.
set -euo pipefail
cd "$(dirname "$0")/.."

FLOOR_PY="${MIGFUSE_FLOOR_PYTHON:-/usr/bin/python3}"
MAIN_PY="${MIGFUSE_VENV:-.venv}/bin/python"
FLOOR_VENV="${MIGFUSE_FLOOR_VENV:-.venv-floor}"
# The tests that read and write archives and files and need no torch (one that does skips there).
FLOOR_TESTS=(tests/test_safe_extract.py tests/test_data_prepare.py tests/test_data_manifest.py
             tests/test_data_openpose_variants.py tests/test_data_skeletons.py tests/test_data_xlsx.py
             tests/test_data_classes.py tests/test_score.py tests/test_scores.py tests/test_export.py
             tests/test_export_real.py tests/test_class_order.py tests/test_store.py tests/test_store_faults.py
             tests/test_cache_info.py tests/test_views.py)

say() { echo "floor_check: $*"; }
version_of() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null; }
older() { "$FLOOR_PY" -c 'import sys; a, b = ([int(n) for n in v.split(".")] for v in sys.argv[1:]); sys.exit(a >= b)' "$1" "$2"; }

if [ ! -x "$FLOOR_PY" ]; then
  say "no Python at $FLOOR_PY: skipped (set MIGFUSE_FLOOR_PYTHON to check another one)"; exit 0
fi
floor_version="$(version_of "$FLOOR_PY")" || { say "$FLOOR_PY does not run: skipped"; exit 0; }
need="$(sed -n 's/^python_requires *= *>= *\([0-9][0-9.]*\) *$/\1/p' setup.cfg)"
if older "$floor_version" "$need"; then
  say "$FLOOR_PY is Python $floor_version, below python_requires >= $need: skipped"; exit 0
fi
if [ -x "$MAIN_PY" ]; then
  main_version="$(version_of "$MAIN_PY")"
  if ! older "$floor_version" "$main_version"; then
    say "$FLOOR_PY is Python $floor_version, not older than $MAIN_PY ($main_version): skipped (the main suite runs on the older one)"
    exit 0
  fi
  say "Python $floor_version at $FLOOR_PY (the main venv has $main_version)"
else
  say "Python $floor_version at $FLOOR_PY (no main venv at $MAIN_PY to compare with)"
fi

start=$SECONDS
if [ -x "$FLOOR_VENV/bin/python" ] && [ "$(version_of "$FLOOR_VENV/bin/python")" != "$floor_version" ]; then
  say "$FLOOR_VENV was made by another Python: remaking it"
  rm -rf "$FLOOR_VENV"
fi
[ -x "$FLOOR_VENV/bin/python" ] || "$FLOOR_PY" -m venv "$FLOOR_VENV" || {
  say "'$FLOOR_PY -m venv $FLOOR_VENV' failed (on Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
PY="$FLOOR_VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
# Core only: torch and the other extras are what makes the main install take minutes. openpyxl and
# xlsxwriter (the test extra's spreadsheet writers) are small and the skeleton-sheet tests need them.
"${PIP[@]}" -e . pytest openpyxl xlsxwriter
say "venv $FLOOR_VENV ready in $((SECONDS - start)) s"

"$PY" scripts/import_modules.py | sed 's/^/floor_check: /'
say "file-handling tests on Python $floor_version:"
# -p no:cacheprovider: the main run's .pytest_cache is not this interpreter's
"$PY" -m pytest -q -p no:cacheprovider "${FLOOR_TESTS[@]}" 2>&1 | sed 's/^/floor_check:   /'
say "passed on Python $floor_version in $((SECONDS - start)) s"
