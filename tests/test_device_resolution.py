"""`--device auto|npu|cuda|cpu`: which device each choice resolves to on a machine with a
given set of accelerators, and the collective backend (hccl, nccl, gloo) that follows. The
availability probes are replaced, so every machine kind is checked on this CPU-only one."""
import pytest

from modellink import backend
from modellink.argument_errors import ArgumentError


@pytest.fixture
def machine(monkeypatch):
    """machine(npu=..., cuda=...) makes the probes report that set of accelerators."""
    def have(npu: bool = False, cuda: bool = False) -> None:
        monkeypatch.setattr(backend.npu, "is_available", lambda: npu)
        monkeypatch.setattr(backend.cuda, "is_available", lambda: cuda)
    return have


@pytest.mark.parametrize("npu,cuda,device,collectives", [
    (True, True, "npu", "hccl"),
    (True, False, "npu", "hccl"),
    (False, True, "cuda", "nccl"),
    (False, False, "cpu", "gloo"),
])
def test_auto_prefers_npu_then_cuda_then_cpu(machine, npu, cuda, device, collectives):
    machine(npu=npu, cuda=cuda)
    chosen = backend.resolve("auto")
    assert (chosen.device, chosen.distributed_backend) == (device, collectives)


@pytest.mark.parametrize("requested,collectives", [("npu", "hccl"), ("cuda", "nccl"), ("cpu", "gloo")])
def test_an_explicit_device_is_taken_even_when_another_is_preferred(machine, requested, collectives):
    machine(npu=True, cuda=True)
    chosen = backend.resolve(requested)
    assert (chosen.device, chosen.distributed_backend) == (requested, collectives)


@pytest.mark.parametrize("requested", ["npu", "cuda"])
def test_an_unavailable_device_is_one_clear_error(machine, requested):
    machine(npu=False, cuda=False)
    with pytest.raises(ArgumentError, match=f"--device {requested} requested but no {requested} device"):
        backend.resolve(requested)
