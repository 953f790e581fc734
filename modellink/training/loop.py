"""The train loop: megatron-core pipeline schedules, optimizer step, eval, logging, saving."""
from __future__ import annotations

import argparse
import gc
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.num_microbatches_calculator import (
    get_current_global_batch_size,
    get_num_microbatches,
    update_num_microbatches,
)
from megatron.core.pipeline_parallel import get_forward_backward_func

from modellink.training.checkpoint.checkpointing import save_checkpoint
from modellink.training.ha.dying_gasp import UPDATE_NOTE, DyingGasp
from modellink.training.ha.exit_conditions import ExitMonitor
from modellink.training.data.context_parallel_batch import context_parallel_share
from modellink.training.data.instruction_batch import pad_step_to_common_length
from modellink.training.monitoring.memory import MemoryReport
from modellink.training.monitoring.metrics import flops_per_iteration, params_l2_norm, training_log_line
from modellink.training.monitoring.monitor import TrainingMonitor
from modellink.training.numerics import NonFiniteError, check_loss, is_grad_check_failure
from modellink.training.monitoring.profiling import StepProfiler
from modellink.training.monitoring.timing import Timing, timed


@dataclass
class IterationRecord:
    iteration: int
    loss: float
    grad_norm: Optional[float]
    learning_rate: float
    skipped: bool
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)
    # This iteration's seconds by Megatron-LM timer name (those --timing-log-level enables).
    timers: Dict[str, float] = field(default_factory=dict)


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    last_saved_iteration: Optional[int] = None
    exit_reason: Optional[str] = None  # set when the run stopped early and saved a dying gasp
    history: List[IterationRecord] = field(default_factory=list)
    validation: List[Tuple[int, float]] = field(default_factory=list)


def _batch_to_device(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: value.cuda(non_blocking=True) for key, value in batch.items()}


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor, check_nan: bool = False
              ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Sum of masked token losses and the token count; the schedule averages them."""
    mask = loss_mask.view(-1).float()
    loss_sum = torch.sum(output_tensor.view(-1).float() * mask)
    if check_nan:
        check_loss(loss_sum)
    report = torch.stack([loss_sum.detach(), mask.sum()])
    num_tokens = mask.sum()
    cp = parallel_state.get_context_parallel_world_size()
    if cp > 1:
        # The schedule divides by the count and does not multiply by CP, while DDP averages
        # gradients over DP x CP: the sum times CP over the CP-wide count makes the gradient
        # the CP=1 one, whatever share of the loss tokens each CP rank holds.
        torch.distributed.all_reduce(num_tokens, group=parallel_state.get_context_parallel_group())
        loss_sum = loss_sum * cp
    return loss_sum, num_tokens.to(torch.int), {"lm loss": report}


def forward_step(data_iterator: Iterator, model: torch.nn.Module, check_nan: bool = False
                 ) -> Tuple[torch.Tensor, Callable]:
    batch = context_parallel_share(_batch_to_device(next(data_iterator)))
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"])
    return output, partial(loss_func, batch["loss_mask"], check_nan=check_nan)


def _sum_over_data_parallel(total: torch.Tensor) -> torch.Tensor:
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    if group.size() > 1:  # a one-rank collective still costs a gloo round trip per step
        torch.distributed.all_reduce(total, group=group)
    return total


def _reduce_reported_loss(losses: List[Dict[str, torch.Tensor]]) -> Optional[float]:
    """Token-weighted loss over the global batch; None on ranks without the loss."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = _sum_over_data_parallel(torch.stack([entry["lm loss"] for entry in losses]).sum(dim=0))
    return (total[0] / total[1].clamp(min=1)).item()


def _reduce_reported_metrics(losses: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
    """Every reported (sum, count) pair besides the loss, averaged over the global batch."""
    if not losses or not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return {}
    names = [name for name in losses[0] if name != "lm loss"]
    if not names:
        return {}
    total = _sum_over_data_parallel(
        torch.stack([torch.stack([entry[name] for name in names]) for entry in losses]).sum(dim=0))
    return {name: (pair[0] / pair[1].clamp(min=1)).item() for name, pair in zip(names, total)}


def configure_model_hooks(config: Any, model: List[torch.nn.Module], optimizer: Any) -> None:
    """Hand megatron-core's schedules the DDP and optimizer callbacks Megatron-LM installs."""
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = [chunk.no_sync for chunk in model]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync


@dataclass(frozen=True)
class ForwardStep:
    """Megatron-LM's `forward_step_func(data_iterator, model) -> (output, loss_func)`, and the
    model rows one sample becomes (the pipeline schedule sizes the activations it sends by
    rows; DPO sends more rows than samples)."""
    func: Callable[[Iterator, torch.nn.Module], Tuple[torch.Tensor, Callable]]
    rows_per_sample: int = 1


def language_model_step(args: argparse.Namespace) -> ForwardStep:
    """Pretraining and instruction fine-tuning: next-token loss on the loss mask."""
    return ForwardStep(partial(forward_step, check_nan=args.check_for_nan_in_loss_and_grad))


def _run_schedule(model: List[torch.nn.Module], data_iterators: List[Iterator],
                  args: argparse.Namespace, forward_only: bool,
                  forward: Optional[ForwardStep] = None) -> List[Dict[str, torch.Tensor]]:
    forward = forward or language_model_step(args)
    # As Megatron-LM, evaluation takes whole --global-batch-size batches while
    # --rampup-batch-size is still growing the training batches.
    num_microbatches = args.num_microbatches if forward_only else get_num_microbatches()
    seq_length = args.seq_length
    if args.variable_seq_lengths and args.pipeline_model_parallel_size > 1:
        data_iterators, seq_length = pad_step_to_common_length(data_iterators,
                                                               num_microbatches)
    return get_forward_backward_func()(
        forward_step_func=forward.func,
        data_iterator=data_iterators if len(data_iterators) > 1 else data_iterators[0],
        model=model,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=args.micro_batch_size * forward.rows_per_sample,
        decoder_seq_length=seq_length,
        forward_only=forward_only,
    )


@dataclass
class StepResult:
    loss: Optional[float]
    grad_norm: Optional[float]
    skipped: bool  # fp16 loss scaling found inf/nan gradients and skipped the update
    num_zeros: Optional[float]  # zero gradient entries, with --log-num-zeros-in-grad
    metrics: Dict[str, float] = field(default_factory=dict)  # what the loss reports besides it


def train_step(model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
               data_iterators: List[Iterator], args: argparse.Namespace,
               before_update: Optional[Callable[[], None]] = None,
               after_update: Optional[Callable[[], None]] = None,
               forward: Optional[ForwardStep] = None) -> StepResult:
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = _run_schedule(model, data_iterators, args, forward_only=False, forward=forward)
    if before_update is not None:
        before_update()
    try:
        with timed(model, "optimizer"):
            update_successful, grad_norm, num_zeros = optimizer.step()
        if update_successful:
            scheduler.step(increment=get_current_global_batch_size())
        if after_update is not None:
            after_update()
        return StepResult(_reduce_reported_loss(losses), grad_norm, not update_successful,
                          num_zeros if args.log_num_zeros_in_grad else None,
                          _reduce_reported_metrics(losses))
    except Exception as exc:
        # The weights may be (half-)updated while the iteration count is not.
        exc.add_note(UPDATE_NOTE)
        raise


def _guarded_train_step(model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
                        data_iterators: List[Iterator], args: argparse.Namespace,
                        iteration: int, before_update: Callable[[], None],
                        after_update: Callable[[], None],
                        forward: Optional[ForwardStep]) -> StepResult:
    try:
        return train_step(model, optimizer, scheduler, data_iterators, args, before_update,
                          after_update, forward)
    except NonFiniteError as exc:
        raise NonFiniteError(f"iteration {iteration}, {exc}") from None
    except RuntimeError as exc:
        if args.check_for_nan_in_loss_and_grad and is_grad_check_failure(exc):
            raise NonFiniteError(f"iteration {iteration}: {exc}") from None
        raise


@torch.no_grad()
def evaluate(model: List[torch.nn.Module], data_iterators: List[Iterator],
             args: argparse.Namespace, forward: Optional[ForwardStep] = None) -> Optional[float]:
    for chunk in model:
        chunk.eval()
    total, count = 0.0, 0
    for _ in range(args.eval_iters):
        loss = _reduce_reported_loss(_run_schedule(model, data_iterators, args, forward_only=True,
                                                   forward=forward))
        if loss is not None:
            total, count = total + loss, count + 1
    for chunk in model:
        chunk.train()
    return total / count if count else None


class ManualGC:
    """--manual-gc: Python's collector runs at the same iterations on every rank instead of
    whenever one rank's allocations cross a threshold, which stalls the other ranks at the next
    collective (why Megatron-LM has the flag). The collector is switched back on at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.active = args.manual_gc
        self.interval = args.manual_gc_interval
        self.after_eval = args.manual_gc_eval
        self.was_enabled = gc.isenabled()

    def start(self) -> None:
        if self.active:
            gc.disable()
            gc.collect()

    def after_iteration(self, iteration: int) -> None:
        if self.active and self.interval and iteration % self.interval == 0:
            gc.collect()

    def after_evaluation(self) -> None:
        if self.active and self.after_eval:
            gc.collect()

    def stop(self) -> None:
        if self.active and self.was_enabled:
            gc.enable()


def _is_logging_rank() -> bool:
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def _log(message: str) -> None:
    if _is_logging_rank():
        print(message, flush=True)


def train(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
          train_iterators: List[Iterator], valid_iterators: Optional[List[Iterator]],
          state: TrainState, start_time: Optional[float] = None,
          forward: Optional[ForwardStep] = None,
          memory: Optional[MemoryReport] = None) -> TrainState:
    """`start_time` (time.time() at launch) anchors --exit-duration-in-mins; `forward`
    defaults to the language-model step; `memory` prints predicted vs measured memory at the
    first log line."""
    exit_monitor = ExitMonitor(args, time.time() if start_time is None else start_time)
    profiler = StepProfiler(args, torch.distributed.get_rank())
    monitor = TrainingMonitor(args, writes=_is_logging_rank())
    dying_gasp = DyingGasp(args, state, model, optimizer, scheduler)
    manual_gc = ManualGC(args)
    timing = Timing(args, model, optimizer)
    exit_monitor.install()
    manual_gc.start()
    timing.install()
    try:
        return _train_iterations(args, model, optimizer, scheduler,
                                 timing.timed_iterators(train_iterators), valid_iterators, state,
                                 exit_monitor, profiler, monitor, dying_gasp, manual_gc, timing,
                                 forward, memory)
    finally:
        timing.remove()
        manual_gc.stop()
        dying_gasp.close()
        exit_monitor.restore()
        profiler.stop()
        monitor.close()


def evaluate_only(args: argparse.Namespace, model: List[torch.nn.Module],
                  valid_iterators: Optional[List[Iterator]], state: TrainState,
                  forward: Optional[ForwardStep] = None) -> TrainState:
    """--skip-train: one validation pass at the loaded iteration, as Megatron-LM does."""
    _log(f"skipping training (--skip-train is on): evaluating at iteration {state.iteration}")
    if valid_iterators:
        monitor = TrainingMonitor(args, writes=_is_logging_rank())
        try:
            _validate(args, model, valid_iterators, state, monitor, forward)
        finally:
            monitor.close()
    return state


def evaluate_test(args: argparse.Namespace, model: List[torch.nn.Module],
                  test_iterators: List[Iterator], state: TrainState,
                  forward: Optional[ForwardStep] = None) -> None:
    """One pass over the test split after training, logged as Megatron-LM logs it."""
    loss = evaluate(model, test_iterators, args, forward)
    if loss is not None:
        _log_evaluation(f"iteration {state.iteration} on test set", loss)


def _train_iterations(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any,
                      scheduler: Any, train_iterators: List[Iterator],
                      valid_iterators: Optional[List[Iterator]], state: TrainState,
                      exit_monitor: ExitMonitor, profiler: StepProfiler,
                      monitor: TrainingMonitor, dying_gasp: DyingGasp, manual_gc: ManualGC,
                      timing: Timing, forward: Optional[ForwardStep],
                      memory: Optional[MemoryReport]) -> TrainState:
    for chunk in model:
        chunk.train()
    world = torch.distributed.get_world_size()
    skipped_since_log, nan_since_log, interval_start = 0, 0, time.perf_counter()
    iterations_since_log = 0
    while state.iteration < args.train_iters:
        # --rampup-batch-size: the batch size follows the samples consumed (a resumed run's too).
        update_num_microbatches(state.consumed_train_samples, consistency_check=True)
        batch_size = get_current_global_batch_size()
        profiler.before_step(state.iteration)
        step_start = time.perf_counter()
        dying_gasp.before_step()
        try:
            step = _guarded_train_step(model, optimizer, scheduler, train_iterators, args,
                                       state.iteration + 1, dying_gasp.begin_update,
                                       dying_gasp.end_update, forward)
        except Exception as exc:
            dying_gasp.on_exception(exc, partial(save, args, model, optimizer, scheduler,
                                                 state))
            raise
        dying_gasp.after_step()
        step_seconds = time.perf_counter() - step_start
        profiler.after_step(state.iteration)
        state.iteration += 1
        state.consumed_train_samples += batch_size
        iterations_since_log += 1
        skipped_since_log += int(step.skipped)
        nan_since_log += int(step.loss is not None and not math.isfinite(step.loss))
        learning_rate = optimizer.param_groups[0]["lr"]
        loss_scale = optimizer.get_loss_scale().item()
        timers = timing.step_seconds()
        if step.loss is not None:
            state.history.append(IterationRecord(state.iteration, step.loss, step.grad_norm,
                                                 learning_rate, step.skipped, step_seconds,
                                                 step.metrics, timers))
        _monitor_step(args, monitor, state, step, learning_rate, loss_scale, step_seconds, world,
                      batch_size, timers)
        if state.iteration % args.log_interval == 0:
            elapsed_ms = (time.perf_counter() - interval_start) * 1000 / iterations_since_log
            params_norm = params_l2_norm(model) if args.log_params_norm else None
            _log(training_log_line(
                args, state.iteration, state.consumed_train_samples, elapsed_ms, learning_rate,
                step.loss, loss_scale, step.grad_norm, skipped_since_log, nan_since_log, world,
                step.num_zeros, params_norm, batch_size, step.metrics))
            if memory is not None:
                memory.report_once(args, state.iteration)
            timers_report = timing.report(iterations_since_log)  # collective
            if timers_report is not None:
                _log(timers_report)
            skipped_since_log, nan_since_log, iterations_since_log = 0, 0, 0
            interval_start = time.perf_counter()
        if valid_iterators and args.eval_iters > 0 and state.iteration % args.eval_interval == 0:
            with timing.paused():
                _validate(args, model, valid_iterators, state, monitor, forward)
            manual_gc.after_evaluation()
            interval_start = time.perf_counter()
        exit_reason = exit_monitor.exit_reason()
        exiting = bool(args.exit_interval) and state.iteration % args.exit_interval == 0
        if args.save and (exit_reason or exiting or args.save_interval
                          and state.iteration % args.save_interval == 0):
            save(args, model, optimizer, scheduler, state, dying_gasp=exit_reason)
            interval_start = time.perf_counter()
        if exit_reason:
            state.exit_reason = exit_reason
            _log(f"exiting program at iteration {state.iteration} ({exit_reason})")
            break
        if exiting:
            _log(f"exiting program at iteration {state.iteration} (--exit-interval)")
            break
        manual_gc.after_iteration(state.iteration)
    return state


def _monitor_step(args: argparse.Namespace, monitor: TrainingMonitor, state: TrainState,
                  step: StepResult, learning_rate: float, loss_scale: float,
                  step_seconds: float, world: int, batch_size: int,
                  timers: Dict[str, float]) -> None:
    """`timers`: this iteration's seconds by Megatron-LM timer name (--timing-log-level)."""
    if not monitor.active:
        return
    scalars = {"learning-rate": learning_rate, "batch-size": float(batch_size),
               "loss-scale": loss_scale, "skipped-iterations": float(step.skipped)}
    if step.loss is not None:
        scalars["lm loss"] = step.loss
    if step.grad_norm is not None:
        scalars["grad-norm"] = step.grad_norm
    scalars.update(step.metrics)
    throughput = {
        "throughput": flops_per_iteration(args, batch_size) / (step_seconds * 1e12 * world),
        "tokens-per-second-per-device": batch_size * args.seq_length / step_seconds / world,
    }
    monitor.log_iteration(state.iteration, scalars, throughput,
                          dict(timers, iteration=step_seconds))


def save(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
         state: TrainState, dying_gasp: Optional[str] = None) -> None:
    save_checkpoint(args, state.iteration, model, optimizer, scheduler,
                    state.consumed_train_samples, state.consumed_valid_samples, dying_gasp)
    state.last_saved_iteration = state.iteration
    kind = f"dying-gasp checkpoint ({dying_gasp})" if dying_gasp else "checkpoint"
    _log(f"saved {kind} at iteration {state.iteration:7d} to {args.save}")


def _validate(args: argparse.Namespace, model: List[torch.nn.Module],
              valid_iterators: List[Iterator], state: TrainState,
              monitor: TrainingMonitor, forward: Optional[ForwardStep]) -> None:
    loss = evaluate(model, valid_iterators, args, forward)
    state.consumed_valid_samples += args.eval_iters * args.global_batch_size
    if loss is not None:
        state.validation.append((state.iteration, loss))
        monitor.log_scalars(state.iteration, {"lm loss validation": loss})
        _log_evaluation(f"iteration {state.iteration}", loss)


def _log_evaluation(where: str, loss: float) -> None:
    ppl = float(torch.exp(torch.tensor(min(loss, 20.0))))
    _log(f" validation loss at {where} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E} |")
