#!/bin/bash
# LLaMA-2-7B reward model (outcome reward: a scalar value head, pairwise Bradley-Terry loss) on
# one node of 8 devices (TP=8, PP=1), ModelLink's settings, from a fine-tuned language model
# checkpoint (its output layer makes way for a fresh value head) and a pairwise dataset
# preprocessed with --handler-name AlpacaStylePairwiseHandler --prompt-type llama2 (DATA_PATH
# is the --output-prefix given there, without the _packed_chosen_..._document suffix). The
# held-out 2% is scored every --eval-interval. Afterwards: evaluation.py --task rm_accuracy
# scores pairs with the saved model; convert_ckpt.py --orm exports it as a Hugging Face
# LlamaForSequenceClassification.
# Every variable below can be overridden from the environment; MODEL_ARGS replaces the model
# size and EXTRA_ARGS is appended (the test suite runs this script on two CPU ranks that way).
set -o pipefail  # the run's exit status, not tee's
export CUDA_DEVICE_MAX_CONNECTIONS=1

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}

CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-"./ckpt/llama-2-7b-rm"}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-"./ckpt/llama-2-7b-sft"}
DATA_PATH=${DATA_PATH:-"./pairwise_dataset/llama-2-7b/orca_rlhf"}
TOKENIZER_PATH=${TOKENIZER_PATH:-"./model_from_hf/llama-2-7b-hf/"}
PROMPT_TYPE=${PROMPT_TYPE:-llama2}
LOG_DIR=${LOG_DIR:-"./logs"}
LOG_NAME=${LOG_NAME:-rm_llama2_7b}
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

GPT_ARGS="
    --use-mcore-models \
    --tensor-model-parallel-size ${TP} \
    --pipeline-model-parallel-size ${PP} \
    --sequence-parallel \
    ${MODEL_ARGS} \
    --tokenizer-type PretrainedFromHF \
    --tokenizer-name-or-path ${TOKENIZER_PATH} \
    --tokenizer-not-use-fast \
    --micro-batch-size 1 \
    --global-batch-size 16 \
    --make-vocab-size-divisible-by 1 \
    --lr 1e-6 \
    --train-iters 1000 \
    --lr-decay-style cosine \
    --untie-embeddings-and-output-weights \
    --disable-bias-linear \
    --attention-dropout 0.0 \
    --init-method-std 0.01 \
    --hidden-dropout 0.0 \
    --position-embedding-type rope \
    --normalization RMSNorm \
    --use-fused-rmsnorm \
    --swiglu \
    --use-flash-attn \
    --no-masked-softmax-fusion \
    --attention-softmax-in-fp32 \
    --min-lr 1e-7 \
    --weight-decay 1e-1 \
    --lr-warmup-fraction 0.01 \
    --clip-grad 1.0 \
    --adam-beta1 0.9 \
    --initial-loss-scale 65536 \
    --adam-beta2 0.95 \
    --no-gradient-accumulation-fusion \
    --no-load-optim \
    --no-load-rng \
    --use-distributed-optimizer \
    --use-fused-swiglu \
    --use-fused-rotary-pos-emb \
    --overlap-grad-reduce \
    --bf16
"

DATA_ARGS="
    --data-path $DATA_PATH \
    --split 98,2,0
"

FINETUNE_ARGS="
    --finetune \
    --is-instruction-dataset \
    --variable-seq-lengths \
    --prompt-type ${PROMPT_TYPE}
"

RL_ARGS="
    --stage rm \
    --is-pairwise-dataset
"

OUTPUT_ARGS="
    --log-interval 1 \
    --save-interval 1000 \
    --eval-interval 500 \
    --eval-iters 10
"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$LOG_DIR"
torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../trainer.py" \
    $GPT_ARGS \
    $DATA_ARGS \
    $FINETUNE_ARGS \
    $RL_ARGS \
    $OUTPUT_ARGS \
    --distributed-backend ${DISTRIBUTED_BACKEND} \
    --load $CKPT_LOAD_DIR \
    --save $CKPT_SAVE_DIR \
    ${EXTRA_ARGS:-} \
    | tee "$LOG_DIR/$LOG_NAME.log"
