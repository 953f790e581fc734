#!/bin/bash
# LLaMA-2-7B chat on one node of 8 devices (TP=8, PP=1), ModelLink's settings: multi-turn
# history in the llama2 prompt format; type "clear" to forget it, "exit" to quit.
# Every variable can be overridden from the environment; MODEL_ARGS replaces the model size
# and EXTRA_ARGS is appended (the test suite runs this script on two CPU ranks that way).
export CUDA_DEVICE_MAX_CONNECTIONS=1

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}

CHECKPOINT=${CHECKPOINT:-"./model_weights/llama-2-7b-mcore"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/llama-2-7b-hf/"}
TP=${TP:-8}
PP=${PP:-1}
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
    --ffn-hidden-size 11008 \
    --num-attention-heads 32 \
    --seq-length 4096 \
    --max-position-embeddings 4096
"}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../inference.py" \
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    ${MODEL_ARGS} \
    --position-embedding-type rope \
    --task chat \
    --prompt-type llama2 \
    --history-turns 3 \
    --top-p 0.9 \
    --temperature 1 \
    --max-new-tokens 256 \
    --max-length 4096 \
    --micro-batch-size 1 \
    --global-batch-size 16 \
    --swiglu \
    --load "${CHECKPOINT}" \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path "${TOKENIZER_PATH}" \
    --tokenizer-not-use-fast \
    --fp16 \
    --normalization RMSNorm \
    --untie-embeddings-and-output-weights \
    --disable-bias-linear \
    --attention-softmax-in-fp32 \
    --no-load-optim \
    --no-load-rng \
    --no-masked-softmax-fusion \
    --no-gradient-accumulation-fusion \
    --exit-on-missing-checkpoint \
    --make-vocab-size-divisible-by 1 \
    --use-kv-cache \
    --distributed-backend ${DISTRIBUTED_BACKEND} \
    ${EXTRA_ARGS:-}
