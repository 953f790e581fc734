#!/usr/bin/env bash
# Run where there is network: downloads into .whl/ (git-ignored) the cp312 manylinux wheels that
# the GPU machine, which has no network and brings its own CUDA torch, transformers, tokenizers,
# safetensors, sentencepiece, einops, numpy and pytest, lacks: megatron-core (pinned, with its
# Requires-Dist packaging>=24.2) and psutil (megatron-core's dist_checkpointing and our
# memory accounting). tests/gpu/run.sh installs them from there with pip --no-index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "megatron-core==$(sed -n 's/^megatron-core==//p' requirements.txt)" psutil "packaging>=24.2"
ls -l .whl
du -sh .whl
