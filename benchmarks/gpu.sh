#!/usr/bin/env bash
# benchmarks/gpu.py from a fresh copy of the tree on a machine whose torch has CUDA:
#
#     bash benchmarks/gpu.sh                 # all rows, JSON in benchmarks/results/
#     bash benchmarks/gpu.sh --out r.json    # any gpu.py option passes through
#
# Python: $VENV (default .venv) when it exists; otherwise one is created from $PYTHON (default
# python3), with --system-site-packages when that interpreter's torch already has CUDA, so the
# machine's CUDA build is used rather than replaced. The project is installed with
# `pip install -e .` (with constraints-ci.txt only when no CUDA torch is present yet). Without
# network, or with pip failing, it goes on: gpu.py runs from the tree and skips, with the reason,
# any row whose dependency is missing. gpu.py runs under `timeout 470` (its own --time-budget is 420 s).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
has_cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
say() { echo "gpu.sh: $*" >&2; }

if [ -x "$VENV/bin/python" ]; then
    PY="$VENV/bin/python"
elif has_cuda_torch "$PYTHON" && "$PYTHON" -m venv --system-site-packages "$VENV"; then
    PY="$VENV/bin/python"
elif "$PYTHON" -m venv "$VENV"; then
    PY="$VENV/bin/python"
else
    say "could not create $VENV; using $PYTHON itself"
    PY="$PYTHON"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() { timeout 600 "$PY" -m pip install --timeout 20 --retries 1 "$@"; }
if has_cuda_torch "$PY"; then
    pip_install -e . || pip_install --no-build-isolation --no-deps -e . \
        || say "pip install failed (offline?); running from the tree"
else
    pip_install -c constraints-ci.txt -e . || say "pip install failed (offline?); running from the tree"
fi

if ! has_cuda_torch "$PY" && [[ " $* " != *" --smoke "* ]]; then
    say "$PY has no CUDA torch: $("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)"
    say "install a CUDA build of torch (or run with --smoke for the CPU check)"
    exit 2
fi
say "$("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"
exec timeout 470 "$PY" benchmarks/gpu.py "$@"
