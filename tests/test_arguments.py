"""The command line: Megatron-LM flags parse, and every inconsistency is one clear error."""
import pytest

from modellink.arguments import ArgumentError, parse_args

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "2", "--train-iters", "5", "--lr", "1e-3",
        "--mock-data"]

# The flags of ModelLink's LLaMA-2-7B pretraining script, at their real values.
LLAMA2_7B_SCRIPT = """
--use-mcore-models --tensor-model-parallel-size 8 --pipeline-model-parallel-size 1
--sequence-parallel --num-layers 32 --hidden-size 4096 --ffn-hidden-size 11008
--num-attention-heads 32 --tokenizer-type Llama2Tokenizer --tokenizer-model tok.model
--seq-length 4096 --max-position-embeddings 4096 --micro-batch-size 1 --global-batch-size 256
--make-vocab-size-divisible-by 1 --lr 1.25e-6 --train-iters 5000 --lr-decay-style cosine
--untie-embeddings-and-output-weights --disable-bias-linear --attention-dropout 0.0
--init-method-std 0.01 --hidden-dropout 0.0 --position-embedding-type rope
--normalization RMSNorm --use-fused-rmsnorm --swiglu --use-flash-attn --no-masked-softmax-fusion
--attention-softmax-in-fp32 --min-lr 1.25e-7 --weight-decay 1e-1 --lr-warmup-fraction 0.01
--clip-grad 1.0 --adam-beta1 0.9 --initial-loss-scale 65536 --adam-beta2 0.95
--no-gradient-accumulation-fusion --no-load-optim --no-load-rng --use-distributed-optimizer
--use-fused-swiglu --use-fused-rotary-pos-emb --overlap-grad-reduce --bf16
--data-path data/alpaca_text_document --split 100,0,0 --log-interval 1 --save-interval 10000
--eval-interval 1000 --eval-iters 0 --distributed-backend nccl --load ckpt --save ckpt
""".split()


def test_modellink_llama2_script_parses():
    args = parse_args(LLAMA2_7B_SCRIPT, world_size=8)
    assert args.data_parallel_size == 1 and args.tensor_model_parallel_size == 8
    assert args.num_microbatches == 256 and args.sequence_parallel and args.bf16
    assert args.num_query_groups == 32 and args.ffn_hidden_size == 11008


def test_more_flags_parse():
    args = parse_args(BASE + [
        "--group-query-attention", "--num-query-groups", "2", "--rotary-base", "500000",
        "--pipeline-model-parallel-size", "2", "--num-layer-list", "1,3", "--seed", "7",
        "--num-experts", "4", "--moe-router-topk", "2", "--expert-model-parallel-size", "2",
        "--moe-aux-loss-coeff", "0.01", "--moe-grouped-gemm", "--add-qkv-bias",
        "--recompute-granularity", "full", "--recompute-method", "uniform",
        "--recompute-num-layers", "1", "--fp16", "--loss-scale", "1024",
        "--tokenizer-name-or-path", "tok", "--padded-vocab-size", "128"], world_size=4)
    assert args.pipeline_layers == [1, 3] and args.data_parallel_size == 2
    assert args.moe_ffn_hidden_size == args.ffn_hidden_size


def test_modellink_chatglm3_rope_flags_parse():
    """ModelLink's ChatGLM3 scripts: --use-glm-rope --rotary-percent 0.5 --no-rope-fusion."""
    args = parse_args(BASE + ["--position-embedding-type", "rope", "--use-glm-rope",
                              "--rotary-percent", "0.5", "--no-rope-fusion"])
    assert args.rotary_interleaved and args.rotary_percent == 0.5 and not args.apply_rope_fusion


@pytest.mark.parametrize("extra, world, needle", [
    (["--no-such-flag"], 1, "--no-such-flag"),
    (["--tensor-model-parallel-size", "3"], 3, "--num-attention-heads 4 is not divisible"),
    (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible"),
    (["--pipeline-model-parallel-size", "2", "--num-layer-list", "1,2"], 2, "sums to 3"),
    (["--pipeline-model-parallel-size", "2", "--num-layer-list", "1,1,2"], 2, "has 3 entries"),
    (["--global-batch-size", "6"], 2, "--global-batch-size 6 is not divisible"),
    (["--tensor-model-parallel-size", "2"], 3, "world size 3 is not divisible"),
    (["--group-query-attention", "--num-query-groups", "3"], 1, "--num-query-groups 3"),
    (["--fp16", "--bf16"], 1, "mutually exclusive"),
    (["--num-experts", "3", "--expert-model-parallel-size", "2"], 2, "--num-experts 3"),
    (["--context-parallel-size", "3"], 3, "2 x --context-parallel-size 3"),
    (["--recompute-granularity", "full"], 1, "--recompute-method"),
    (["--save-interval", "5"], 1, "--save"),
    (["--rotary-percent", "1.5"], 1, "--rotary-percent must be in (0, 1]"),
    (["--rotary-percent", "0.3"], 1, "even whole number of channels"),
    (["--rotary-interleaved"], 1, "--rotary-interleaved needs --position-embedding-type rope"),
    (["--position-embedding-type", "rope", "--rotary-interleaved",
      "--use-fused-rotary-pos-emb"], 1, "cannot be combined with --use-fused-rotary-pos-emb"),
])
def test_bad_flags_give_one_line_error(extra, world, needle):
    with pytest.raises(ArgumentError) as info:
        parse_args(BASE + extra, world_size=world)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_missing_data_is_an_error():
    argv = [a for a in BASE if a != "--mock-data"]
    with pytest.raises(ArgumentError, match="--data-path"):
        parse_args(argv, world_size=1)
