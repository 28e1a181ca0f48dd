#!/usr/bin/env bash
# Create .venv (if missing) and install the project with all extras.
# torch==2.13.0 is installed first on purpose: it is the CPU build that this
# project pins; a bare `torch` would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PY --version 2>&1)"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "setup: installing torch==2.13.0 and the project (first run only)"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[all]"
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
