#!/bin/bash
# Mixtral-8x7B pretraining on 4 nodes of 8 devices (TP=8, PP=4, EP=1), ModelLink's settings:
# 8 experts with top-2 routing, an auxiliary load-balancing loss, GQA with 8 key/value groups,
# RoPE base 1e6, a 32k context.
# Every variable below can be overridden from the environment; MODEL_ARGS replaces the model
# size and EXTRA_ARGS is appended (the test suite runs this script on two CPU ranks that way).
set -o pipefail  # the run's exit status, not tee's
export CUDA_DEVICE_MAX_CONNECTIONS=1

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-4}
NODE_RANK=${NODE_RANK:-0}

CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/Mixtral-8x7B"}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./model_weights/Mixtral-8x7B-v0.1-tp8-pp4-ep1"}
DATA_PATH=${DATA_PATH:-"./dataset/Mixtral-8x7B/alpaca_text_document"}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-"./model_from_hf/Mixtral-8x7B/tokenizer.model"}
LOG_DIR=${LOG_DIR:-"./logs"}
TP=${TP:-8}
PP=${PP:-4}
EP=${EP:-1}
DISTRIBUTED_BACKEND=${DISTRIBUTED_BACKEND:-nccl}

DISTRIBUTED_ARGS="
    --nproc_per_node $GPUS_PER_NODE \
    --nnodes $NNODES \
    --node_rank $NODE_RANK \
    --master_addr $MASTER_ADDR \
    --master_port $MASTER_PORT
"

MODEL_ARGS=${MODEL_ARGS:-"
    --num-layers 32 \
    --hidden-size 4096 \
    --ffn-hidden-size 14336 \
    --num-attention-heads 32 \
    --seq-length 32768 \
    --max-position-embeddings 32768
"}

MOE_ARGS="
    --num-experts 8 \
    --expert-model-parallel-size ${EP} \
    --moe-router-topk 2 \
    --moe-router-load-balancing-type aux_loss \
    --moe-aux-loss-coeff 0.02 \
    --moe-token-dispatcher-type allgather \
    --moe-permutation-async-comm \
    --moe-grouped-gemm
"

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --sequence-parallel \
    ${MODEL_ARGS} \
    ${MOE_ARGS} \
    --group-query-attention \
    --num-query-groups 8 \
    --tokenizer-type Llama2Tokenizer \
    --tokenizer-model ${TOKENIZER_MODEL} \
    --vocab-size 32000 \
    --make-vocab-size-divisible-by 1 \
    --rotary-base 1000000 \
    --micro-batch-size 1 \
    --global-batch-size 8 \
    --lr 1.25e-6 \
    --train-iters 2000 \
    --lr-decay-style cosine \
    --untie-embeddings-and-output-weights \
    --disable-bias-linear \
    --attention-dropout 0.0 \
    --init-method-std 0.01 \
    --hidden-dropout 0.0 \
    --position-embedding-type rope \
    --normalization RMSNorm \
    --norm-epsilon 1e-5 \
    --use-fused-rmsnorm \
    --swiglu \
    --use-flash-attn \
    --no-masked-softmax-fusion \
    --attention-softmax-in-fp32 \
    --min-lr 1.25e-7 \
    --weight-decay 1e-1 \
    --lr-warmup-fraction 0.01 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --initial-loss-scale 65536 \
    --no-gradient-accumulation-fusion \
    --no-load-optim \
    --no-load-rng \
    --use-distributed-optimizer \
    --overlap-grad-reduce \
    --bf16
"

DATA_ARGS="
    --data-path $DATA_PATH \
    --split 100,0,0
"

OUTPUT_ARGS="
    --log-interval 1 \
    --save-interval 2000 \
    --eval-interval 2000 \
    --eval-iters 0
"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$LOG_DIR"
torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../pretrain_gpt.py" \
    $GPT_ARGS \
    $DATA_ARGS \
    $OUTPUT_ARGS \
    --distributed-backend ${DISTRIBUTED_BACKEND} \
    --load $CKPT_LOAD_DIR \
    --save $CKPT_SAVE_DIR \
    ${EXTRA_ARGS:-} \
    | tee "$LOG_DIR/train_mixtral_8x7b.log"
