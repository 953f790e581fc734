"""Run several `pretrain()` calls in one single-rank process and record what the optimizer
holds, so tests can compare it with values computed by hand (tests/test_optimizer_settings.py,
tests/test_resume_flags.py).

MODELLINK_TEST_RUNS is a JSON list of {"name": ..., "args": [...], "capture_update": bool}.
For every run the probe records, after each train step, each parameter group's learning rate,
weight decay and wd_mult; with "capture_update", the weights before the last step, their
gradients as the optimizer receives them and the weights after; after a checkpoint
load, the optimizer's per-parameter state and torch's RNG state. Everything goes to the file
named by the first argument (torch.save).
"""
import json
import os
import sys
from typing import Any, Dict, List

import torch
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

from modellink.errors import run_cli
from modellink.training import loop, pretrain


def _named_params(model: List[torch.nn.Module]) -> Dict[str, torch.nn.Parameter]:
    return {f"{i}.{name}": p for i, chunk in enumerate(model)
            for name, p in chunk.named_parameters()}


def _optimizer_state(optimizer: Any, model: List[torch.nn.Module]) -> Dict[str, Dict[str, Any]]:
    """Adam's moments by parameter name; a parameter without state maps to {}."""
    inner = optimizer.optimizer
    return {name: {key: value.clone() for key, value in inner.state.get(p, {}).items()
                   if isinstance(value, torch.Tensor)}
            for name, p in _named_params(model).items()}


def _recording_train_step(record: Dict[str, Any], capture_update: bool, original: Any) -> Any:
    def train_step(model, optimizer, scheduler, data_iterators, args, before_update=None,
                   after_update=None, forward=None):
        params = _named_params(model)

        def grab_grads() -> None:
            if capture_update:
                record["before"] = {n: p.detach().clone() for n, p in params.items()}
                record["grads"] = {n: p.main_grad.detach().clone() for n, p in params.items()}
            if before_update is not None:
                before_update()

        result = original(model, optimizer, scheduler, data_iterators, args, grab_grads,
                          after_update, forward)
        if capture_update:
            record["after"] = {n: p.detach().clone() for n, p in params.items()}
            record["grad_norm"] = result.grad_norm
        record["groups"].append([{"lr": g["lr"], "weight_decay": g["weight_decay"],
                                  "wd_mult": g.get("wd_mult", 1.0), "size": len(g["params"])}
                                 for g in optimizer.param_groups])
        record["final_state"] = _optimizer_state(optimizer, model)
        return result
    return train_step


def _recording_load(record: Dict[str, Any], original: Any) -> Any:
    def load_checkpoint(args, model, optimizer, scheduler):
        loaded = original(args, model, optimizer, scheduler)
        record["loaded_state"] = _optimizer_state(optimizer, model)
        record["loaded_rng"] = torch.get_rng_state().clone()
        return loaded
    return load_checkpoint


def _keep_process_group() -> None:
    destroy_num_microbatches_calculator()
    parallel_state.destroy_model_parallel()


def main() -> None:
    runs = json.loads(os.environ["MODELLINK_TEST_RUNS"])
    train_step, load, shutdown = loop.train_step, pretrain.load_checkpoint, pretrain.shutdown
    records = {}
    for index, run in enumerate(runs):
        record = records[run["name"]] = {"groups": []}
        loop.train_step = _recording_train_step(record, run.get("capture_update", False),
                                                train_step)
        pretrain.load_checkpoint = _recording_load(record, load)
        # One process group for every run: a second rendezvous on the same port could clash.
        pretrain.shutdown = shutdown if index == len(runs) - 1 else _keep_process_group
        pretrain.pretrain(run["args"])
    torch.save(records, sys.argv[1])


if __name__ == "__main__":
    sys.exit(run_cli(main))
