"""Run under torchrun (or alone): several one-step `pretrain()` runs in the same processes;
after the first step of each, record on every rank the planner's bytes for this rank's stage
next to the tensor bytes the built model, DDP buffers and optimizer actually hold, and the
planner's activation peak next to the peak of tensors autograd kept alive for backward during
that step (unique storages, counted through saved-tensor hooks, weights left out).

MODELLINK_TEST_RUNS is a JSON list of pretrain() argument lists; the records go to
`<first argument>/<run index>.<rank>.json` (tests/test_plan.py).
"""
import json
import os
import sys
from typing import Any, Dict, List

import torch
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

from modellink.errors import run_cli
from modellink.plan import estimate
from modellink.training import loop, pretrain


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def measured(model: List[torch.nn.Module], optimizer: Any) -> Dict[str, int]:
    """Weights, gradient-buffer views (without DDP's alignment padding) and optimizer state
    other than the model's own weights (fp32 main copies and moments; torch's per-parameter
    `step` counters are host scalars and left out)."""
    params = {id(p): p for chunk in model for p in chunk.parameters()}.values()
    storages = {p.untyped_storage().data_ptr() for p in params}
    state = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in opt.optimizer.param_groups:
            for main in group["params"]:
                if main.untyped_storage().data_ptr() not in storages:
                    state += _nbytes(main)
                state += sum(_nbytes(value) for key, value in opt.optimizer.state.get(main, {}).items()
                             if key != "step" and torch.is_tensor(value))
    return {"weights": sum(_nbytes(p) for p in params),
            "grads": sum(_nbytes(p.main_grad) for p in params),
            "optimizer": state}


class SavedTensorPeak:
    """Live bytes of the storages autograd saves for backward, and their peak. Each saved
    tensor is packed into a holder; autograd drops the holder when it frees the graph (after
    backward, or when a recomputed chunk is done), which releases the storage's count."""

    def __init__(self, model: List[torch.nn.Module]) -> None:
        self.weights = {p.untyped_storage().data_ptr() for chunk in model for p in chunk.parameters()}
        self.holders: Dict[int, int] = {}
        self.live = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.weights or storage.nbytes() == 0:
            return tensor
        if self.holders.get(key, 0) == 0:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.holders[key] = self.holders.get(key, 0) + 1
        return _Held(self, key, storage.nbytes(), tensor)

    def release(self, key: int, nbytes: int) -> None:
        self.holders[key] -= 1
        if self.holders[key] == 0:
            self.live -= nbytes

    @staticmethod
    def unpack(held: Any) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held


class _Held:
    def __init__(self, owner: SavedTensorPeak, key: int, nbytes: int, tensor: torch.Tensor) -> None:
        self.owner, self.key, self.nbytes, self.tensor = owner, key, nbytes, tensor

    def __del__(self) -> None:
        self.owner.release(self.key, self.nbytes)


def _recording_train_step(out: str, original: Any) -> Any:
    def train_step(model, optimizer, scheduler, data_iterators, args, *rest, **kwargs):
        saved = SavedTensorPeak(model)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            result = original(model, optimizer, scheduler, data_iterators, args, *rest, **kwargs)
        if not os.path.exists(out):
            stage = estimate(args).stages[parallel_state.get_pipeline_model_parallel_rank()]
            record = {"measured": dict(measured(model, optimizer), activations=saved.peak),
                      "planned": {"weights": stage.weights, "grads": stage.grads,
                                  "optimizer": stage.optimizer,
                                  "activations": stage.activations.total,
                                  "peak": stage.peak}}
            with open(out, "w") as f:
                json.dump(record, f)
        return result
    return train_step


def _keep_process_group() -> None:
    destroy_num_microbatches_calculator()
    parallel_state.destroy_model_parallel()


def main() -> None:
    runs = json.loads(os.environ["MODELLINK_TEST_RUNS"])
    train_step, shutdown = loop.train_step, pretrain.shutdown
    rank = int(os.environ.get("RANK", 0))
    for index, argv in enumerate(runs):
        loop.train_step = _recording_train_step(
            os.path.join(sys.argv[1], f"{index}.{rank}.json"), train_step)
        pretrain.shutdown = shutdown if index == len(runs) - 1 else _keep_process_group
        pretrain.pretrain(argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
