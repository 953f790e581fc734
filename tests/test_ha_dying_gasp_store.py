"""The dying gasp's verdict in the job's store: who failed, who takes part (no torchrun)."""
from datetime import timedelta

import pytest
import torch

from conftest import _free_port
from modellink.training.ha.dying_gasp_store import FAILED, SURVIVOR, UPDATING, Board

WORLD = 4


@pytest.fixture
def store():
    return torch.distributed.TCPStore("127.0.0.1", _free_port(), is_master=True,
                                      timeout=timedelta(seconds=10))


def _agree(store, roles: dict, wait_seconds: float = 5.0, held: dict = None):
    """Every rank in `roles` reports (holding iteration 6 unless `held` says otherwise),
    then each asks for the verdict."""
    boards = {rank: Board(store, rank, WORLD) for rank in roles}
    for rank, role in roles.items():
        boards[rank].report(role, (held or {}).get(rank, 6),
                            f"exception: E{rank}" if role == FAILED else "")
    verdicts = [board.agree(wait_seconds) for board in boards.values()]
    assert all(v == verdicts[0] for v in verdicts)
    return verdicts[0]


def test_one_rank_failed_the_others_answer(store):
    verdict = _agree(store, {2: FAILED, 0: SURVIVOR, 1: SURVIVOR, 3: SURVIVOR})
    assert (verdict.kind, verdict.alive, verdict.failed) == ("parts", [0, 1, 2, 3], [2])
    assert verdict.reason == "exception: E2" and verdict.iteration == 6


def test_every_rank_failed_saves_collectively(store):
    verdict = _agree(store, {rank: FAILED for rank in range(WORLD)})
    assert (verdict.kind, verdict.alive, verdict.failed) == ("all", [0, 1, 2, 3], [0, 1, 2, 3])


def test_ranks_that_began_the_update_take_no_part(store):
    verdict = _agree(store, {1: FAILED, 0: UPDATING, 2: SURVIVOR, 3: UPDATING})
    assert (verdict.kind, verdict.alive, verdict.failed) == ("parts", [1, 2], [1])


def test_a_silent_rank_is_left_out_after_the_wait(store):
    verdict = _agree(store, {1: FAILED, 2: SURVIVOR}, wait_seconds=0.2)
    assert (verdict.kind, verdict.alive, verdict.failed) == ("parts", [1, 2], [1])
    late = Board(store, 3, WORLD)
    late.report(SURVIVOR, 6)
    assert late.agree(5.0).alive == [1, 2]  # decided already: the late rank is not in it


def test_the_iteration_most_ranks_hold_is_saved(store):
    """After a SIGKILL the survivors may straddle the update of the step in flight."""
    verdict = _agree(store, {0: SURVIVOR, 1: SURVIVOR, 3: SURVIVOR}, wait_seconds=0.2,
                     held={0: 7, 1: 6, 3: 7})
    assert (verdict.kind, verdict.alive, verdict.iteration) == ("parts", [0, 3], 7)
    tie = _agree(torch.distributed.TCPStore("127.0.0.1", _free_port(), is_master=True),
                 {0: SURVIVOR, 1: SURVIVOR}, wait_seconds=0.2, held={0: 7, 1: 6})
    assert (tie.alive, tie.iteration) == ([0], 7)
