"""Run under torchrun (2 ranks): what the replica optimizer allocates, and an in-memory loss.

    replica_probe.py OUT ARGS...   for the distributed optimizer without and with the replica:
                                   two steps, then the bytes each rank allocates; with the
                                   replica, instance 1 zeroes its optimizer shard and restores
                                   it from instance 0. Rank R writes OUT.R.json.
"""
import json
import sys
from typing import Any, Dict, List

import torch
from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

from modellink.arguments import parse_args
from modellink.models.gpt import transformer_config_from_args
from modellink.training.components import build_model, build_optimizer, build_scheduler
from modellink.training.data.datasets import build_datasets, build_iterator
from modellink.training.initialize import initialize
from modellink.training.loop import configure_model_hooks, train_step
from modellink.training.pretrain import _training_tokenizer, padded_vocab_size
from modellink.training.ha.replica import instance_id, memory_account, restore_from_replica

REPLICA = ["--enable-high-availability", "--enable-optimizer-state-local-copy"]


def _bytes(tensors: List[torch.Tensor], exclude: set) -> int:
    """Bytes of the distinct storages behind `tensors`, leaving out those in `exclude`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(n for ptr, n in storages.items() if ptr not in exclude)


def _measure(model: List[torch.nn.Module], optimizer: Any) -> Dict[str, int]:
    params = [p for chunk in model for p in chunk.parameters()]
    grads = [p.main_grad for p in params]
    replicated = {t.untyped_storage().data_ptr() for t in params + grads}
    sharded = []
    for opt in optimizer.chained_optimizers:
        for group in opt.optimizer.param_groups:
            for main_param in group["params"]:
                sharded.append(main_param)  # a view of the weights in fp32: not counted twice
                sharded += [v for v in opt.optimizer.state[main_param].values() if v.dim() > 0]
    return {"numel": sum(p.numel() for p in params),
            "replicated": _bytes(params, set()) + _bytes(grads, set()),
            "sharded": _bytes(sharded, replicated)}


def _optimizer_tensors(optimizer: Any) -> List[torch.Tensor]:
    return [t for opt in optimizer.chained_optimizers for group in opt.optimizer.param_groups
            for p in group["params"] for t in [p.data, *opt.optimizer.state[p].values()]]


def _run(argv: List[str]) -> Dict[str, Any]:
    args = parse_args(argv)
    tokenizer = _training_tokenizer(args)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args)
    backend = initialize(args)
    config = transformer_config_from_args(args, backend.device)
    model = build_model(args, config)
    optimizer = build_optimizer(args, config, model)
    scheduler = build_scheduler(args, optimizer)
    configure_model_hooks(config, model, optimizer)
    iterators = [build_iterator(build_datasets(args, tokenizer)[0], args, 0)]
    for _ in range(2):
        train_step(model, optimizer, scheduler, iterators, args)
    account = memory_account(args, config.params_dtype)
    result: Dict[str, Any] = dict(_measure(model, optimizer), instance=instance_id(),
                                  account=[account.replicated, account.sharded, account.shards])
    if args.enable_optimizer_state_local_copy:
        before = [t.clone() for t in _optimizer_tensors(optimizer)]
        if instance_id() == 1:
            for tensor in _optimizer_tensors(optimizer):
                tensor.zero_()
        result["lost"] = not all(torch.equal(a, b)
                                 for a, b in zip(before, _optimizer_tensors(optimizer)))
        restore_from_replica(optimizer, source_instance=0)
        result["restored"] = all(torch.equal(a, b)
                                 for a, b in zip(before, _optimizer_tensors(optimizer)))
        result["next_loss"] = train_step(model, optimizer, scheduler, iterators, args).loss
    parallel_state.destroy_model_parallel()
    destroy_num_microbatches_calculator()
    return result


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:] + ["--use-distributed-optimizer"]
    results = {"distopt": _run(argv), "replica": _run(argv + REPLICA)}
    with open(f"{out}.{torch.distributed.get_rank()}.json", "w") as handle:
        json.dump(results, handle)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
