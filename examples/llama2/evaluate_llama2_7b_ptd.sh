#!/bin/bash
# LLaMA-2-7B benchmark evaluation (MMLU by default) on one node of 8 devices (TP=1, PP=8 as
# ModelLink's script), from a converted checkpoint. TASK and DATA_PATH choose the benchmark:
# mmlu ./mmlu/data, ceval ./ceval, gsm8k ./gsm8k, boolq ./boolq, bbh ./bbh, agieval ./agieval,
# human_eval ./human_eval. Every variable can be overridden from the environment; MODEL_ARGS
# replaces the model size and EXTRA_ARGS is appended (the test suite runs this on CPU ranks).
export CUDA_DEVICE_MAX_CONNECTIONS=1

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}

CHECKPOINT=${CHECKPOINT:-"./model_weights/llama-2-7b-mcore"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/llama-2-7b-hf/"}
TASK=${TASK:-mmlu}
DATA_PATH=${DATA_PATH:-"./mmlu/data/test/"}
TP=${TP:-1}
PP=${PP:-8}
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
torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../evaluation.py" \
    --task-data-path ${DATA_PATH} \
    --task ${TASK} \
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    ${MODEL_ARGS} \
    --max-new-tokens 1 \
    --max-length 4096 \
    --disable-bias-linear \
    --swiglu \
    --position-embedding-type rope \
    --load ${CHECKPOINT} \
    --normalization RMSNorm \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path ${TOKENIZER_PATH} \
    --tokenizer-not-use-fast \
    --fp16 \
    --micro-batch-size 1 \
    --use-fused-rmsnorm \
    --exit-on-missing-checkpoint \
    --no-load-rng \
    --no-load-optim \
    --untie-embeddings-and-output-weights \
    --no-masked-softmax-fusion \
    --make-vocab-size-divisible-by 1 \
    --seed 42 \
    --distributed-backend ${DISTRIBUTED_BACKEND} \
    ${EXTRA_ARGS:-}
