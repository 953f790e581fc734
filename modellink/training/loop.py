"""The train loop: megatron-core pipeline schedules, optimizer step, eval, logging, saving."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.num_microbatches_calculator import get_num_microbatches
from megatron.core.pipeline_parallel import get_forward_backward_func

from modellink.training.checkpointing import save_checkpoint
from modellink.training.metrics import training_log_line


@dataclass
class IterationRecord:
    iteration: int
    loss: float
    grad_norm: Optional[float]
    learning_rate: float
    skipped: bool
    seconds: float


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    last_saved_iteration: Optional[int] = None
    history: List[IterationRecord] = field(default_factory=list)
    validation: List[Tuple[int, float]] = field(default_factory=list)


def _batch_to_device(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: value.cuda(non_blocking=True) for key, value in batch.items()}


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Sum of masked token losses and the token count; the schedule averages them."""
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(output_tensor.view(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"lm loss": report}


def forward_step(data_iterator: Iterator, model: torch.nn.Module) -> Tuple[torch.Tensor, Callable]:
    batch = _batch_to_device(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"])


def _reduce_reported_loss(losses: List[Dict[str, torch.Tensor]]) -> Optional[float]:
    """Token-weighted loss over the global batch; None on ranks without the loss."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = torch.stack([entry["lm loss"] for entry in losses]).sum(dim=0)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return (total[0] / total[1].clamp(min=1)).item()


def configure_model_hooks(config: Any, model: List[torch.nn.Module], optimizer: Any) -> None:
    """Hand megatron-core's schedules the DDP and optimizer callbacks Megatron-LM installs."""
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = [chunk.no_sync for chunk in model]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync


def _run_schedule(model: List[torch.nn.Module], data_iterators: List[Iterator],
                  args: argparse.Namespace, forward_only: bool) -> List[Dict[str, torch.Tensor]]:
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterators if len(data_iterators) > 1 else data_iterators[0],
        model=model,
        num_microbatches=get_num_microbatches(),
        seq_length=args.seq_length,
        micro_batch_size=args.micro_batch_size,
        decoder_seq_length=args.seq_length,
        forward_only=forward_only,
    )


def train_step(model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
               data_iterators: List[Iterator], args: argparse.Namespace
               ) -> Tuple[Optional[float], Optional[float], bool]:
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = _run_schedule(model, data_iterators, args, forward_only=False)
    update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=args.global_batch_size)
    return _reduce_reported_loss(losses), grad_norm, not update_successful


@torch.no_grad()
def evaluate(model: List[torch.nn.Module], data_iterators: List[Iterator],
             args: argparse.Namespace) -> Optional[float]:
    for chunk in model:
        chunk.eval()
    total, count = 0.0, 0
    for _ in range(args.eval_iters):
        loss = _reduce_reported_loss(_run_schedule(model, data_iterators, args, forward_only=True))
        if loss is not None:
            total, count = total + loss, count + 1
    for chunk in model:
        chunk.train()
    return total / count if count else None


def _is_logging_rank() -> bool:
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def _log(message: str) -> None:
    if _is_logging_rank():
        print(message, flush=True)


def train(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
          train_iterators: List[Iterator], valid_iterators: Optional[List[Iterator]],
          state: TrainState) -> TrainState:
    for chunk in model:
        chunk.train()
    world = torch.distributed.get_world_size()
    skipped_since_log, interval_start = 0, time.perf_counter()
    iterations_since_log = 0
    while state.iteration < args.train_iters:
        step_start = time.perf_counter()
        loss, grad_norm, skipped = train_step(model, optimizer, scheduler, train_iterators, args)
        step_seconds = time.perf_counter() - step_start
        state.iteration += 1
        state.consumed_train_samples += args.global_batch_size
        iterations_since_log += 1
        skipped_since_log += int(skipped)
        learning_rate = optimizer.param_groups[0]["lr"]
        if loss is not None:
            state.history.append(IterationRecord(state.iteration, loss, grad_norm,
                                                 learning_rate, skipped, step_seconds))
        if state.iteration % args.log_interval == 0:
            elapsed_ms = (time.perf_counter() - interval_start) * 1000 / iterations_since_log
            _log(training_log_line(
                args, state.iteration, state.consumed_train_samples, elapsed_ms, learning_rate,
                loss, optimizer.get_loss_scale().item(), grad_norm, skipped_since_log, 0, world))
            skipped_since_log, iterations_since_log = 0, 0
            interval_start = time.perf_counter()
        if valid_iterators and args.eval_iters > 0 and state.iteration % args.eval_interval == 0:
            _validate(args, model, valid_iterators, state)
            interval_start = time.perf_counter()
        exiting = bool(args.exit_interval) and state.iteration % args.exit_interval == 0
        if args.save and (exiting or args.save_interval
                          and state.iteration % args.save_interval == 0):
            save(args, model, optimizer, scheduler, state)
            interval_start = time.perf_counter()
        if exiting:
            _log(f"exiting program at iteration {state.iteration} (--exit-interval)")
            break
    return state


def save(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
         state: TrainState) -> None:
    save_checkpoint(args, state.iteration, model, optimizer, scheduler,
                    state.consumed_train_samples, state.consumed_valid_samples)
    state.last_saved_iteration = state.iteration
    _log(f"saved checkpoint at iteration {state.iteration:7d} to {args.save}")


def _validate(args: argparse.Namespace, model: List[torch.nn.Module],
              valid_iterators: List[Iterator], state: TrainState) -> None:
    loss = evaluate(model, valid_iterators, args)
    state.consumed_valid_samples += args.eval_iters * args.global_batch_size
    if loss is not None:
        state.validation.append((state.iteration, loss))
        ppl = float(torch.exp(torch.tensor(min(loss, 20.0))))
        _log(f" validation loss at iteration {state.iteration} | lm loss value: {loss:.6E} | "
             f"lm loss PPL: {ppl:.6E} |")
