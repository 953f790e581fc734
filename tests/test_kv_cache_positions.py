"""KV-cache decoding of a learned-absolute-position model equals the full forward: the cached
step must be fed its true positions (RoPE and ALiBi models take theirs from the cache, so the
transformers comparisons of test_inference_generate.py cannot show a wrong position here)."""
import torch

from test_inference_generate import single_process_env


LEARNED_ABSOLUTE = [
    "--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "32", "--max-position-embeddings", "32",
    "--position-embedding-type", "learned_absolute", "--normalization", "LayerNorm",
    "--attention-dropout", "0", "--hidden-dropout", "0", "--vocab-size", "100",
    "--padded-vocab-size", "128", "--tokenizer-type", "NullTokenizer", "--device", "cpu",
]


def test_kv_cache_decoding_with_learned_absolute_positions(tmp_path):
    from modellink.inference import load_model, parse_inference_args
    from modellink.training.pretrain import pretrain
    ckpt = str(tmp_path / "ckpt")
    with single_process_env():
        pretrain(LEARNED_ABSOLUTE + [
            "--mock-data", "--micro-batch-size", "1", "--global-batch-size", "1", "--lr", "1e-3",
            "--train-iters", "1", "--seed", "3", "--use-cpu-initialization", "--save", ckpt,
            "--eval-iters", "0", "--log-interval", "1"])
    with single_process_env():
        model = load_model(parse_inference_args(LEARNED_ABSOLUTE + ["--load", ckpt,
                                                                    "--max-length", "32"]))
        try:
            tokens = torch.tensor([[5, 17, 33, 4, 60, 12, 8, 71, 40, 23, 9, 55]])
            full = model.logits(tokens)[0]
            cache = model.new_cache(1, 32)
            steps = [model.logits(tokens[:, :4], cache)[0, -1]]
            steps += [model.logits(tokens[:, p:p + 1], cache)[0, -1] for p in range(4, 12)]
        finally:
            model.close()
            torch.distributed.destroy_process_group()
    cached = torch.stack(steps)
    torch.testing.assert_close(cached, full[3:], rtol=0, atol=1e-4 * float(full.abs().max()))
