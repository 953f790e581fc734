#!/bin/bash
# LLaMA-2-7B LoRA fine-tuning on one node of 8 devices (TP=8, PP=1), ModelLink's settings:
# the converted base model (tools/checkpoint/convert_ckpt.py) stays frozen in CKPT_LOAD_DIR,
# adapters on every attention and MLP linear are trained and saved, alone, to CKPT_SAVE_DIR.
# Set LORA_LOAD_DIR to continue from saved adapters. The instruction dataset is preprocessed
# with --handler-name AlpacaStyleInstructionHandler --prompt-type llama2 (DATA_PATH is the
# --output-prefix given there, without the _packed_..._document suffix). To get a plain model
# back: convert_ckpt.py --load-model-type mg --save-model-type hf --load-dir CKPT_LOAD_DIR
# --lora-load CKPT_SAVE_DIR ... merges W + (alpha / r) * B @ A.
# The run is the full fine-tuning script's (same variables, MODEL_ARGS and EXTRA_ARGS; see
# tune_llama2_7b_full_ptd.sh) with the LoRA flags added, so the two cannot drift apart.
export CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/llama-2-7b-lora"}
export LOG_NAME=${LOG_NAME:-tune_llama2_7b_lora}
LORA_LOAD_DIR=${LORA_LOAD_DIR:-}
LORA_R=${LORA_R:-16}
LORA_ALPHA=${LORA_ALPHA:-32}

LORA_ARGS="--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 \
    --lora-r ${LORA_R} --lora-alpha ${LORA_ALPHA} ${LORA_LOAD_DIR:+--lora-load $LORA_LOAD_DIR}"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXTRA_ARGS="$LORA_ARGS ${EXTRA_ARGS:-}" exec bash "$SCRIPT_DIR/tune_llama2_7b_full_ptd.sh"
