#!/usr/bin/env bash
# End-to-end demo on two CPU ranks: generate a corpus and train a tokenizer on it, preprocess
# it into a Megatron dataset, pretrain a tiny Llama with tensor parallelism (TP=2), stop and
# save half-way, then resume from the checkpoint to the end; then fine-tune it on the demo's
# instruction data, generate answers to held-out questions, and score exact match on the
# held-out test set before and after fine-tuning.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/ensure_env.sh"
cd "$ROOT"
OUT="${DEMO_DIR:-$ROOT/demo_output}"
ITERS="${DEMO_ITERS:-200}"
SFT_ITERS="${DEMO_SFT_ITERS:-300}"
PROMPT_TYPE=empty
rm -rf "$OUT"

echo "== 1/9 generate the demo corpus and its tokenizer"
python -m modellink.data.demo --output-dir "$OUT/raw"

echo "== 2/9 preprocess into a Megatron indexed dataset"
mkdir -p "$OUT/data"
python preprocess_data.py --input "$OUT/raw/pretrain.jsonl" --output-prefix "$OUT/data/demo" \
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" \
  --handler-name GeneralPretrainHandler --append-eod --workers 2

MODEL=(
  --tensor-model-parallel-size 2
  --num-layers 4 --hidden-size 128 --ffn-hidden-size 352 --num-attention-heads 4
  --group-query-attention --num-query-groups 2 --seq-length 128 --max-position-embeddings 128
  --normalization RMSNorm --swiglu --position-embedding-type rope --disable-bias-linear
  --untie-embeddings-and-output-weights --use-flash-attn --use-fused-rmsnorm
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" --device cpu
)
TRAIN=(
  "${MODEL[@]}" --sequence-parallel
  --attention-dropout 0 --hidden-dropout 0 --init-method-std 0.02
  --data-path "$OUT/data/demo_text_document" --split 95,5,0
  --micro-batch-size 8 --global-batch-size 16 --train-iters "$ITERS"
  --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 10 --weight-decay 0.01
  --clip-grad 1.0 --use-distributed-optimizer
  --log-interval 10 --eval-interval $((ITERS / 2)) --eval-iters 4
  --save "$OUT/ckpt" --load "$OUT/ckpt"
)

echo "== 3/9 pretrain with TP=2 on two CPU ranks, stop and save at iteration $((ITERS / 2))"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}" --exit-interval $((ITERS / 2))

echo "== 4/9 resume from $OUT/ckpt and train to iteration $ITERS"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}"

echo "== 5/9 preprocess the instruction data (Alpaca records, prompt type $PROMPT_TYPE, packed)"
python preprocess_data.py --input "$OUT/raw/instruction.jsonl" --output-prefix "$OUT/data/sft" \
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" \
  --handler-name AlpacaStyleInstructionHandler --prompt-type "$PROMPT_TYPE" --append-eod \
  --pack --seq-length 128 --workers 2

# Both scores use the same prompt format, the one the model is fine-tuned with.
evaluate() {  # CHECKPOINT RESULTS_JSON
  torchrun --nproc-per-node 2 evaluation.py "${MODEL[@]}" --load "$1" --prompt-type "$PROMPT_TYPE" \
    --task exact_match --task-data-path "$OUT/raw/test.jsonl" --eval-output "$2" \
    --greedy --use-kv-cache --max-new-tokens 6 --max-length 64 --evaluation-batch-size 50
}
accuracy() {
  python -c 'import json, sys; r = json.load(open(sys.argv[1]))["exact_match"]["total"]
print("%.1f%% (%d of %d)" % (100 * r["accuracy"], r["correct"], r["total"]))' "$1"
}

echo "== 6/9 exact match of the pretrained model on the held-out test set"
evaluate "$OUT/ckpt" "$OUT/eval_pretrained.json"

echo "== 7/9 fine-tune on the instruction data (loss on the responses only)"
torchrun --nproc-per-node 2 pretrain_gpt.py "${MODEL[@]}" --sequence-parallel \
  --attention-dropout 0 --hidden-dropout 0 \
  --data-path "$OUT/data/sft" --is-instruction-dataset --variable-seq-lengths \
  --prompt-type "$PROMPT_TYPE" --split 100,0,0 \
  --micro-batch-size 8 --global-batch-size 16 --train-iters "$SFT_ITERS" \
  --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 5 --weight-decay 0.1 \
  --clip-grad 1.0 --use-distributed-optimizer --log-interval 10 --eval-iters 0 \
  --finetune --load "$OUT/ckpt" --no-load-optim --no-load-rng --save "$OUT/ckpt_sft"

echo "== 8/9 generate with the fine-tuned model: three held-out questions"
mapfile -t QUESTIONS < <(python -c 'import json, sys
for line in open(sys.argv[1]).readlines()[:3]: print(json.loads(line)["question"])' "$OUT/raw/test.jsonl")
for question in "${QUESTIONS[@]}"; do
  torchrun --nproc-per-node 2 inference.py "${MODEL[@]}" --load "$OUT/ckpt_sft" \
    --prompt-type "$PROMPT_TYPE" --task greedy --prompt "$question" --max-new-tokens 6 \
    --max-length 64 --use-kv-cache
done

echo "== 9/9 exact match of the fine-tuned model on the held-out test set"
evaluate "$OUT/ckpt_sft" "$OUT/eval_finetuned.json"

echo "held-out exact match ($OUT/raw/test.jsonl): pretrained $(accuracy "$OUT/eval_pretrained.json"), fine-tuned $(accuracy "$OUT/eval_finetuned.json")"
echo "demo finished: checkpoints in $OUT/ckpt and $OUT/ckpt_sft, datasets in $OUT/data"
