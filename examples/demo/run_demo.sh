#!/usr/bin/env bash
# End-to-end demo on two CPU ranks: generate a corpus and train a tokenizer on it, preprocess
# it into a Megatron dataset, pretrain a tiny Llama with tensor parallelism (TP=2), stop and
# save half-way, then resume from the checkpoint to the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/ensure_env.sh"
cd "$ROOT"
OUT="${DEMO_DIR:-$ROOT/demo_output}"
ITERS="${DEMO_ITERS:-200}"
rm -rf "$OUT"

echo "== 1/4 generate the demo corpus and its tokenizer"
python -m modellink.data.demo --output-dir "$OUT/raw"

echo "== 2/4 preprocess into a Megatron indexed dataset"
mkdir -p "$OUT/data"
python preprocess_data.py --input "$OUT/raw/pretrain.jsonl" --output-prefix "$OUT/data/demo" \
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" \
  --handler-name GeneralPretrainHandler --append-eod --workers 2

TRAIN=(
  --tensor-model-parallel-size 2 --sequence-parallel
  --num-layers 4 --hidden-size 128 --ffn-hidden-size 352 --num-attention-heads 4
  --group-query-attention --num-query-groups 2 --seq-length 128 --max-position-embeddings 128
  --normalization RMSNorm --swiglu --position-embedding-type rope --disable-bias-linear
  --untie-embeddings-and-output-weights --use-flash-attn --use-fused-rmsnorm
  --attention-dropout 0 --hidden-dropout 0 --init-method-std 0.02
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer"
  --data-path "$OUT/data/demo_text_document" --split 95,5,0
  --micro-batch-size 8 --global-batch-size 16 --train-iters "$ITERS"
  --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 10 --weight-decay 0.01
  --clip-grad 1.0 --use-distributed-optimizer
  --log-interval 10 --eval-interval $((ITERS / 2)) --eval-iters 4
  --save "$OUT/ckpt" --load "$OUT/ckpt" --device cpu
)

echo "== 3/4 pretrain with TP=2 on two CPU ranks, stop and save at iteration $((ITERS / 2))"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}" --exit-interval $((ITERS / 2))

echo "== 4/4 resume from $OUT/ckpt and train to iteration $ITERS"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}"
echo "demo finished: checkpoints in $OUT/ckpt, dataset in $OUT/data"
