#!/usr/bin/env bash
# The GPU check in one command: the device tier's tests (tests/gpu), bench/train_e2e.py --preset 1b
# and bench/generate.py on the GPU, and one summary table; about 8 minutes on one H100/H200.
#
#   bash tests/gpu/run.sh              # on the GPU machine
#   bash tests/gpu/run.sh --self-test  # anywhere: collect the tier, print the table as "no GPU"
#
# What it needs comes from .whl/ when that folder holds wheels (tests/gpu/fetch_wheels.sh fills
# it on a machine with network; nothing is then read from an index), else from the package
# index: the CUDA torch build unless this torch already has CUDA, the project's requirements,
# and flash-attn only where a binary wheel exists. PYTHON picks the interpreter (python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ "${1:-}" != "--self-test" ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    if command -v nvidia-smi >/dev/null 2>&1 &&
        ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
      "$PY" -m pip install -q torch  # the index's default Linux build is the CUDA one
    fi
    "$PY" -m pip install -q -r requirements.txt pytest
    "$PY" -m pip install -q --only-binary=:all: flash-attn 2>/dev/null ||
      echo "flash-attn: no binary wheel for this torch/python; --use-flash-attn runs on torch SDPA"
  fi
fi
exec "$PY" tests/gpu/tier_summary.py "$@"
