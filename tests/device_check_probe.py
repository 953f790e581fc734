"""Run under torchrun (2 CPU ranks, MODELLINK_DEVICE_CHECK=1): each scenario's collective and
whether the device check refused it. Rank 0 writes {scenario: error message or null} as JSON.
"""
import argparse
import json
import sys
from typing import Callable, Dict, Optional

import torch

from modellink import backend
from modellink.backend.device_check import HostTensorError
from modellink.training.ha.exit_conditions import ExitMonitor


def old_log_setup_pattern() -> None:
    # _log_setup before the fix: parameter counts in a host tensor, on the default group.
    params = [torch.nn.Parameter(torch.ones(3, 2))]
    local = torch.tensor([sum(p.numel() for p in params),
                          sum(p.numel() for p in params if p.requires_grad)])
    torch.distributed.all_reduce(local)


def derived_host_tensor() -> None:
    torch.distributed.all_reduce(torch.stack([torch.zeros(2), torch.ones(2)]).sum(0) * 2)


def copied_to_host() -> None:
    torch.distributed.broadcast(torch.ones(2, device="cuda").cpu(), src=0)


def host_all_gather_into_tensor() -> None:
    from megatron.core.tensor_parallel.mappings import dist_all_gather_func  # captured alias

    dist_all_gather_func(torch.empty(4, device="cuda"), torch.ones(2).to("cpu"))


def host_point_to_point() -> None:
    # Each rank fails before it communicates, so neither waits for the other.
    if torch.distributed.get_rank() == 0:
        torch.distributed.send(torch.ones(2), dst=1)
    else:
        torch.distributed.recv(torch.empty(2), src=0)


def device_tensors() -> None:
    torch.distributed.all_reduce(torch.ones(2, device=torch.cuda.current_device()))
    torch.distributed.all_reduce(torch.tensor([1, 2], device="cuda") + torch.tensor(1))
    torch.distributed.all_reduce(torch.zeros(2).cuda())
    torch.distributed.all_reduce(torch.nn.Parameter(torch.zeros(2)).data)
    if torch.distributed.get_rank() == 0:
        torch.distributed.send(torch.ones(2).to("cuda"), dst=1)
    else:
        torch.distributed.recv(torch.empty(2, device="cuda"), src=0)


def host_tensor_on_gloo_group() -> None:
    group = torch.distributed.new_group(backend="gloo")
    torch.distributed.all_reduce(torch.ones(2), group=group)


def object_collectives() -> None:
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {"rank": torch.distributed.get_rank()})
    torch.distributed.broadcast_object_list([gathered], src=0)


def exit_monitor() -> None:
    args = argparse.Namespace(exit_signal_handler=True, exit_duration_in_mins=1)
    ExitMonitor(args, start_time=0.0).exit_reason()


SCENARIOS = [old_log_setup_pattern, derived_host_tensor, copied_to_host,
             host_all_gather_into_tensor, host_point_to_point, device_tensors,
             host_tensor_on_gloo_group, object_collectives, exit_monitor]


def _outcome(scenario: Callable[[], None]) -> Optional[str]:
    try:
        scenario()
    except HostTensorError as exc:
        return str(exc)
    return None


def main(out: str) -> None:
    backend.activate(backend.resolve("cpu"))
    torch.distributed.init_process_group("gloo")
    results: Dict[str, Optional[str]] = {s.__name__: _outcome(s) for s in SCENARIOS}
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(results, handle)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
