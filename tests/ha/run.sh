#!/usr/bin/env bash
# The real-Home-Assistant tests (tests/ha/test_home_assistant.py) against
# the built lookout (target/debug/lookout, or $LOOKOUT_BIN). Makes the Home
# Assistant venv in target/ha-venv when it is missing or
# tests/ha/requirements.txt changed (~160 s, 600 MB). Skips, saying why,
# only where they cannot run: no Python 3.13 ($HA_PYTHON, python3.13 on
# PATH, or pyenv's), or no PyPI to install Home Assistant from.
# Arguments go to unittest (a test name, -k PATTERN, -f).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/ha-venv
req=tests/ha/requirements.txt

if ! cmp -s "$req" "$venv/requirements.txt"; then
  py=""
  # A pyenv shim is on PATH even where its version is not selected: ask
  # each candidate for its version.
  for p in "${HA_PYTHON:-}" "$(command -v python3.13 || true)" ~/.pyenv/versions/3.13*/bin/python3.13; do
    if [ -n "$p" ] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
      py=$p
      break
    fi
  done
  if [ -z "$py" ]; then
    echo "tests/ha: SKIPPED, Home Assistant 2025.4 needs Python 3.13 and there is none (set HA_PYTHON, or install python3.13)"
    exit 0
  fi
  echo "tests/ha: installing Home Assistant into $venv with $py"
  start=$SECONDS
  rm -rf "$venv"
  "$py" -m venv "$venv"
  log=$(mktemp)
  if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >"$log" 2>&1; then
    cat "$log"
    rm -rf "$venv"
    if grep -qE "Failed to establish a new connection|Temporary failure in name resolution|Network is unreachable|No route to host|Read timed out" "$log"; then
      echo "tests/ha: SKIPPED, PyPI is not reachable to install Home Assistant"
      exit 0
    fi
    exit 1
  fi
  rm -f "$log"
  cp "$req" "$venv/requirements.txt"
  echo "tests/ha: Home Assistant installed in $((SECONDS - start)) s"
fi

start=$SECONDS
status=0
"$venv/bin/python" -m unittest -v "${@:-tests/ha/test_home_assistant.py}" || status=$?
echo "tests/ha: $((SECONDS - start)) s"
exit $status
