#!/usr/bin/env bash
# End-to-end demo on two CPU ranks: generate a corpus and train a tokenizer on it, preprocess
# it into a Megatron dataset, pretrain a tiny Llama with tensor parallelism (TP=2), stop and
# save half-way, then resume from the checkpoint to the end; then fine-tune it on the demo's
# instruction data, generate answers to held-out questions, and score exact match on the
# held-out test set before and after fine-tuning; finally, DPO on generated preference pairs
# (the right answer preferred to a plausible wrong one) from the fine-tuned model, scoring
# preference accuracy on held-out pairs before and after.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/ensure_env.sh"
cd "$ROOT"
OUT="${DEMO_DIR:-$ROOT/demo_output}"
ITERS="${DEMO_ITERS:-200}"
SFT_ITERS="${DEMO_SFT_ITERS:-300}"
DPO_ITERS="${DEMO_DPO_ITERS:-60}"
PROMPT_TYPE=empty
rm -rf "$OUT"

echo "== 1/11 generate the demo corpus and its tokenizer"
python -m modellink.data.demo --output-dir "$OUT/raw"

echo "== 2/11 preprocess into a Megatron indexed dataset"
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

echo "== 3/11 pretrain with TP=2 on two CPU ranks, stop and save at iteration $((ITERS / 2))"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}" --exit-interval $((ITERS / 2))

echo "== 4/11 resume from $OUT/ckpt and train to iteration $ITERS"
torchrun --nproc-per-node 2 pretrain_gpt.py "${TRAIN[@]}"

echo "== 5/11 preprocess the instruction data (Alpaca records, prompt type $PROMPT_TYPE, packed)" \
  "and the preference pairs (right answer chosen, a plausible mistake rejected)"
python preprocess_data.py --input "$OUT/raw/instruction.jsonl" --output-prefix "$OUT/data/sft" \
  --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" \
  --handler-name AlpacaStyleInstructionHandler --prompt-type "$PROMPT_TYPE" --append-eod \
  --pack --seq-length 128 --workers 2
for split in train test; do
  python preprocess_data.py --input "$OUT/raw/pairs_$split.jsonl" \
    --output-prefix "$OUT/data/pairs_$split" \
    --tokenizer-type PretrainedFromHF --tokenizer-name-or-path "$OUT/raw/tokenizer" \
    --handler-name AlpacaStylePairwiseHandler --prompt-type "$PROMPT_TYPE" --append-eod --workers 2
done

# Every score uses the same prompt format, the one the model is fine-tuned with. Preference
# accuracy: how often a held-out pair's right answer gets the higher log-probability.
evaluate() {  # CHECKPOINT RESULTS_JSON [TASK DATA_FLAGS...]
  torchrun --nproc-per-node 2 evaluation.py "${MODEL[@]}" --load "$1" --prompt-type "$PROMPT_TYPE" \
    --task exact_match "${@:3}" --task-data-path "$OUT/raw/test.jsonl" --eval-output "$2" \
    --greedy --use-kv-cache --max-new-tokens 6 --max-length 64 --evaluation-batch-size 50
}
with_preference=(preference --data-path "$OUT/data/pairs_test")
accuracy() {  # RESULTS_JSON TASK
  python -c 'import json, sys; r = json.load(open(sys.argv[1]))[sys.argv[2]]["total"]
print("%.1f%% (%d of %d)" % (100 * r["accuracy"], r["correct"], r["total"]))' "$1" "$2"
}

echo "== 6/11 exact match of the pretrained model on the held-out test set"
evaluate "$OUT/ckpt" "$OUT/eval_pretrained.json"

echo "== 7/11 fine-tune on the instruction data (loss on the responses only)"
torchrun --nproc-per-node 2 pretrain_gpt.py "${MODEL[@]}" --sequence-parallel \
  --attention-dropout 0 --hidden-dropout 0 \
  --data-path "$OUT/data/sft" --is-instruction-dataset --variable-seq-lengths \
  --prompt-type "$PROMPT_TYPE" --split 100,0,0 \
  --micro-batch-size 8 --global-batch-size 16 --train-iters "$SFT_ITERS" \
  --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 5 --weight-decay 0.1 \
  --clip-grad 1.0 --use-distributed-optimizer --log-interval 10 --eval-iters 0 \
  --finetune --load "$OUT/ckpt" --no-load-optim --no-load-rng --save "$OUT/ckpt_sft"

echo "== 8/11 generate with the fine-tuned model: three held-out questions"
mapfile -t QUESTIONS < <(python -c 'import json, sys
for line in open(sys.argv[1]).readlines()[:3]: print(json.loads(line)["question"])' "$OUT/raw/test.jsonl")
for question in "${QUESTIONS[@]}"; do
  torchrun --nproc-per-node 2 inference.py "${MODEL[@]}" --load "$OUT/ckpt_sft" \
    --prompt-type "$PROMPT_TYPE" --task greedy --prompt "$question" --max-new-tokens 6 \
    --max-length 64 --use-kv-cache
done

echo "== 9/11 exact match and preference accuracy of the fine-tuned model on held-out data"
evaluate "$OUT/ckpt_sft" "$OUT/eval_finetuned.json" "${with_preference[@]}"

# One pass over the 1000 training pairs; a learning rate of 1e-4 or more moved the held-out
# preference accuracy less, or lowered it.
echo "== 10/11 DPO from the fine-tuned model (also the frozen reference), $DPO_ITERS iterations"
torchrun --nproc-per-node 2 trainer.py "${MODEL[@]}" --sequence-parallel \
  --attention-dropout 0 --hidden-dropout 0 \
  --stage dpo --is-pairwise-dataset --dpo-loss-type sigmoid --dpo-beta 0.1 \
  --data-path "$OUT/data/pairs_train" --variable-seq-lengths --prompt-type "$PROMPT_TYPE" \
  --split 100,0,0 --micro-batch-size 8 --global-batch-size 16 --train-iters "$DPO_ITERS" \
  --lr 5e-5 --lr-decay-style constant --weight-decay 0.0 \
  --clip-grad 1.0 --use-distributed-optimizer --log-interval 5 --eval-iters 0 \
  --finetune --load "$OUT/ckpt_sft" --no-load-optim --no-load-rng --save "$OUT/ckpt_dpo"

echo "== 11/11 exact match and preference accuracy after DPO"
evaluate "$OUT/ckpt_dpo" "$OUT/eval_dpo.json" "${with_preference[@]}"

echo "held-out exact match ($OUT/raw/test.jsonl):" \
  "pretrained $(accuracy "$OUT/eval_pretrained.json" exact_match)," \
  "fine-tuned $(accuracy "$OUT/eval_finetuned.json" exact_match)," \
  "after DPO $(accuracy "$OUT/eval_dpo.json" exact_match)"
echo "held-out preference accuracy ($OUT/raw/pairs_test.jsonl):" \
  "before DPO $(accuracy "$OUT/eval_finetuned.json" preference)," \
  "after DPO $(accuracy "$OUT/eval_dpo.json" preference)"
echo "demo finished: checkpoints in $OUT/ckpt, $OUT/ckpt_sft and $OUT/ckpt_dpo, datasets in $OUT/data"
