#!/usr/bin/env bash
# The whole test suite on CPU (gloo ranks); installs what it needs into the project venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/ensure_env.sh"
cd "$ROOT"
python -m pytest tests -q "$@"
