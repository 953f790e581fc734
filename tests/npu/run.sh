#!/usr/bin/env bash
# The device tier on an Ascend NPU, for users with one: the tests bash tests/gpu/run.sh runs on a
# GPU (fused operators in bf16/fp16 against the reference, the MC2 linears with the real kernels
# over HCCL, the demo model's bf16 loss curve against transformers, TP/PP/DP over HCCL,
# checkpoints moving between NPU and CPU, generation against transformers), on the NPU with the
# real torch_npu. Install torch_npu matching your CANN and torch first. No NPU has run this yet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys, torch, torch_npu; sys.exit(not torch.npu.is_available())' 2>/dev/null; then
  echo "tests/npu/run.sh: needs torch_npu and a visible NPU (install torch_npu for your CANN)" >&2
  exit 1
fi
MODELLINK_TIER_DEVICE=npu exec "$PY" -m pytest tests/gpu -m gpu -q -rs "$@"
