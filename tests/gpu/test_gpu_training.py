"""Training on the device: the demo model's bf16 loss curve against a transformers loop on the
same data and weights; tensor, pipeline and data parallelism over NCCL against one device; a
checkpoint saved on the device resumes on the CPU and back."""
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import TINY_LLAMA, train_history
from data_helpers import demo, preprocess  # noqa: F401  (demo is a fixture)
from gpu_tier import DEVICE, FP32_RUNS, on_device, tier
from test_inference_generate import convert

pytestmark = tier()

# The demo's model (examples/demo/run_demo.sh) at one device.
DEMO_MODEL = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
STEPS, BATCH, LR = 50, 8, 1e-3
# Two bf16 runs of the same training differ by rounding (kernels, summation order, where each
# side keeps fp32); per step their losses stay this close over the 50 steps.
BF16_LOSS = dict(abs=0.05, rel=0.02)


def _demo_run(tmp_path: Path, demo: dict) -> tuple:  # noqa: F811
    tokenizer = transformers.AutoTokenizer.from_pretrained(demo["tokenizer"])
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tokenizer),
                                                                **DEMO_MODEL))
    hf.save_pretrained(tmp_path / "hf")
    model_flags = convert(tmp_path / "hf", tmp_path / "mg")
    prefix = preprocess(demo["pretrain"], tmp_path / "demo", demo["tokenizer"], "--handler-name",
                        "GeneralPretrainHandler", "--append-eod")[0]
    # Megatron's bf16 recipe on both sides: bf16 weights and activations, fp32 main weights
    # and Adam state, one micro-batch per step, no weight decay, no clipping.
    argv = model_flags + [
        "--device", DEVICE, "--bf16", "--tokenizer-type", "PretrainedFromHF",
        "--tokenizer-name-or-path", demo["tokenizer"], "--data-path", prefix,
        "--split", "100,0,0", "--micro-batch-size", str(BATCH), "--global-batch-size",
        str(BATCH), "--train-iters", str(STEPS), "--lr", str(LR), "--lr-decay-style", "constant",
        "--weight-decay", "0", "--clip-grad", "0", "--adam-beta1", "0.9", "--adam-beta2",
        "0.999", "--adam-eps", "1e-8", "--load", str(tmp_path / "mg"), "--finetune",
        "--log-interval", "10", "--eval-iters", "0", "--seed", "1234"]
    return hf, argv


def _samples(argv: List[str]) -> List[dict]:
    """The samples the run consumed, in order: its own train dataset, read sequentially."""
    from modellink.arguments import parse_args
    from modellink.data.tokenizers import build_tokenizer
    from modellink.training.data.datasets import build_datasets

    args = parse_args(argv)
    train, _ = build_datasets(args, build_tokenizer(args))
    return [train[i] for i in range(STEPS * BATCH)]


def _transformers_losses(hf: transformers.PreTrainedModel, samples: List[dict]) -> List[float]:
    model = hf.to(device=DEVICE, dtype=torch.bfloat16).train()
    params = list(model.parameters())
    main = [p.detach().float().requires_grad_() for p in params]
    optimizer = torch.optim.AdamW(main, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        batch = samples[step * BATCH:(step + 1) * BATCH]
        tokens, labels = (torch.stack([torch.as_tensor(s[key]) for s in batch]).to(DEVICE)
                          for key in ("tokens", "labels"))
        logits = model(input_ids=tokens).logits.float()
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        loss.backward()
        for weight, param in zip(main, params):
            weight.grad, param.grad = param.grad.float(), None
        optimizer.step()
        with torch.no_grad():
            for weight, param in zip(main, params):
                param.copy_(weight)
        losses.append(loss.item())
    return losses


def test_demo_model_bf16_loss_curve_matches_transformers(tmp_path, demo):  # noqa: F811
    hf, argv = _demo_run(tmp_path, demo)
    ours = train_history(tmp_path, argv, nproc=1)["loss"]
    theirs = _transformers_losses(hf, _samples(argv))
    assert len(ours) == len(theirs) == STEPS
    assert ours == pytest.approx(theirs, **BF16_LOSS)
    assert ours[-1] < ours[0] - 1.0  # it learns: the comparison is not of two flat lines


ITERS = ["--train-iters", "5"]
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2": [],
    "dp2_distopt": ["--use-distributed-optimizer"],
}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return train_history(tmp_path_factory.mktemp("one"), on_device(TINY_LLAMA) + ITERS, nproc=1)


@pytest.mark.parametrize("layout", [pytest.param(name, marks=tier(devices=2))
                                    for name in sorted(LAYOUTS)])
def test_parallel_layout_over_two_devices_matches_one(layout, one_device, tmp_path):
    """fp32: the collectives run on the device's own backend (NCCL, HCCL) with device tensors."""
    run = train_history(tmp_path, on_device(TINY_LLAMA) + ITERS + LAYOUTS[layout], nproc=2)
    assert run["loss"] == pytest.approx(one_device["loss"], **FP32_RUNS)
    assert run["grad_norm"] == pytest.approx(one_device["grad_norm"], **FP32_RUNS)


def test_checkpoint_moves_between_device_and_cpu(tmp_path):
    """Saved on the device at 3, resumed on the CPU and saved at 6, resumed on the device to 9:
    the same losses as 9 iterations on the device (fp32; the optimizer, scheduler and host RNG
    state travel, and the schedule continues)."""
    args = on_device(TINY_LLAMA) + ["--train-iters", "9", "--lr-decay-style", "cosine",
                                    "--lr-warmup-iters", "2"]
    straight = train_history(tmp_path, args, nproc=1, name="straight")
    ckpt = str(tmp_path / "ckpt")
    legs = [(DEVICE, ["--exit-interval", "3"]), ("cpu", ["--load", ckpt, "--exit-interval", "6"]),
            (DEVICE, ["--load", ckpt])]
    losses, iterations = [], []
    for index, (device, extra) in enumerate(legs):
        run = train_history(tmp_path, on_device(args, device) + ["--save", ckpt] + extra,
                            nproc=1, name=f"leg{index}")
        losses += run["loss"]
        iterations += run["iteration"]
    assert iterations == list(range(1, 10))
    assert losses == pytest.approx(straight["loss"], **FP32_RUNS)
