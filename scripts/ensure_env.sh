#!/usr/bin/env bash
# Source me: creates (once) and activates the project venv with everything installed.
# MODELLINK_VENV overrides the location. Re-installs only when requirements change.
set -euo pipefail
MODELLINK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MODELLINK_VENV:-$MODELLINK_ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.modellink-installed"
wanted="$(cat "$MODELLINK_ROOT/requirements.txt" "$MODELLINK_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      python -m pip install -q torch
    else
      # The CPU build; an unpinned torch would pull a multi-GB CUDA build.
      python -m pip install -q torch==2.13.0
    fi
  fi
  python -m pip install -q -e "$MODELLINK_ROOT[test]"
  echo "$wanted" > "$stamp"
fi
