#!/usr/bin/env bash
# Create ./.venv with the project and everything its tests need. Idempotent.
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build,
# while 2.13.0 is the CPU build this kind of machine serves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.q7x2-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip setuptools wheel
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[deploy,sandbox,runtime,test]"
  touch "$stamp"
fi
