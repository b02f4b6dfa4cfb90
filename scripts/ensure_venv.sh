#!/usr/bin/env bash
# Create .venv (Python 3.10) and install oneflow-posmlp with its pinned dependencies.
# Idempotent: does nothing when .venv is up to date with setup.cfg / pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.installed"
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  exit 0
fi

find_python310() {
  local c
  for c in "${POSMLP_PYTHON:-}" python3.10; do
    [[ -n $c ]] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      command -v "$c"; return 0
    fi
  done
  local roots=()
  command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
  roots+=("$HOME/.pyenv" /root/.pyenv /opt/pyenv)
  for r in "${roots[@]}"; do
    for c in "$r"/versions/3.10.*/bin/python3.10; do
      [[ -x $c ]] && "$c" -c 'import venv' >/dev/null 2>&1 && { echo "$c"; return 0; }
    done
  done
  return 1
}

if [[ ! -x $VENV/bin/python ]]; then
  if ! PY=$(find_python310); then
    cat >&2 <<'MSG'
error: Python 3.10 was not found. OneFlow 0.9.0 publishes wheels for CPython 3.7-3.10 only.
  Install one, for example:   pyenv install 3.10.13
  or point to one:            POSMLP_PYTHON=/path/to/python3.10 make test
MSG
    exit 1
  fi
  echo "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
echo "installing oneflow-posmlp and its pinned dependencies into $VENV (oneflow is a ~1 GB wheel on first install)"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# flowvision 0.2.1 is an sdist whose setup.py imports pkg_resources: build it (and our package) with the
# venv's own setuptools < 70 instead of an isolated build environment that would pick the newest one.
"${PIP[@]}" 'setuptools>=64,<70' wheel
"${PIP[@]}" --no-build-isolation -e '.[test,onnx]'
echo "$want" > "$STAMP"
