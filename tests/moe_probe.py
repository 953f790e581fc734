"""One forward of a tiny Mixtral-style model per MoE flag setting, run under torchrun on one CPU
rank (megatron-core's MoE layer needs its parallel state); the test reads the JSON it writes.

    python -m torch.distributed.run --nproc-per-node=1 tests/moe_probe.py OUT
"""
import json
import sys
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TINY_LLAMA  # noqa: E402

MOE = TINY_LLAMA + ["--num-layers", "2", "--num-experts", "4", "--moe-router-topk", "2",
                    "--moe-aux-loss-coeff", "0.01", "--train-iters", "1"]
CAPACITY = ["--moe-expert-capacity-factor", "0.5"]
SHARED = ["--moe-shared-expert-intermediate-size", "96"]
VARIANTS: Dict[str, List[str]] = {
    "dropless": [],
    "capacity": CAPACITY,
    "capacity_pad": CAPACITY + ["--moe-pad-expert-input-to-capacity"],
    "capacity_position": CAPACITY + ["--moe-token-drop-policy", "position"],
    "shared": SHARED,
    "shared_gate": SHARED + ["--shared-expert-gate"],
    "softmax_topk": ["--moe-router-load-balancing-type", "softmax_topk"],
    "grouped_gemm": ["--moe-grouped-gemm"],
    "async_comm": ["--moe-permutation-async-comm"],
}


def _forward(argv: List[str]) -> Dict[str, object]:
    """Loss, parameter count and, per MoE layer, the routing map and chosen experts' weights."""
    from megatron.core.transformer.moe.router import TopKRouter

    from modellink.arguments import parse_args
    from modellink.models.gpt import build_model_chunks, transformer_config_from_args
    from modellink.models.init import init_layout_independent

    args = parse_args(argv)
    args.device = "cpu"
    config = transformer_config_from_args(args, "cpu")
    (model,) = build_model_chunks(args, config)
    init_layout_independent([model], config, args.seed)
    routes: List[torch.Tensor] = []
    prob_sums: List[float] = []

    def record(module: torch.nn.Module, inputs: object, output: object) -> None:
        probs, routing_map = output
        routes.append(routing_map.int())
        prob_sums.append(probs.sum(dim=-1).mean().item())

    for module in model.modules():
        if isinstance(module, TopKRouter):
            module.register_forward_hook(record)
    torch.manual_seed(0)
    tokens = torch.randint(0, 100, (args.micro_batch_size, args.seq_length))
    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        loss = model(tokens, position_ids, None, labels=tokens).float().mean()
    return {"loss": loss.item(), "params": sum(p.numel() for p in model.parameters()),
            "routed": [int(r.sum()) for r in routes], "tokens": tokens.numel(),
            "routes": [r.tolist() for r in routes], "prob_sum": prob_sums}


def main(out: str) -> None:
    from modellink.arguments import parse_args
    from modellink.training.initialize import initialize, shutdown

    initialize(parse_args(MOE))
    try:
        results = {name: _forward(MOE + extra) for name, extra in VARIANTS.items()}
    finally:
        shutdown()
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
