"""Publishing a dying gasp written in parts: all parts or nothing (no torchrun)."""
import argparse
import os

import torch

from modellink.training.checkpoint.checkpointing import TRACKER_FILENAME
from modellink.training.ha.dying_gasp_parts import publish_parts


def _args(save) -> argparse.Namespace:
    return argparse.Namespace(
        save=str(save), data_parallel_size=2, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=2, expert_model_parallel_size=1,
        use_distributed_optimizer=True, no_save_optim=False,
        enable_optimizer_state_local_copy=False, keep_last_n_checkpoints=None)


def _shard(values) -> dict:
    """One rank's `local_shards`: one bucket of 3 unpadded elements, padded to 2 x 2."""
    local = {key: torch.tensor(values, dtype=torch.float32)
             for key in ("param", "exp_avg", "exp_avg_sq")}
    return {"single": True,
            "optimizers": [{0: {torch.float32: {"numel_unpadded": 3, "buckets": [(3, local)]}}}]}


def _write_parts(tmp, stages, shards):
    for stage in stages:
        rank_dir = tmp / f"mp_rank_00_{stage:03d}"
        rank_dir.mkdir(parents=True)
        torch.save({"iteration": 4}, rank_dir / "model_optim_rng.pt")
        for shard in shards:
            part = tmp / "parts" / rank_dir.name / f"distrib_optim.pt.{shard}"
            part.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_shard([1.0 + 2 * shard, 2.0 + 2 * shard]), part)


def test_every_part_there_is_assembled_and_published(tmp_path):
    tmp = tmp_path / "iter_0000004.tmp"
    _write_parts(tmp, stages=(0, 1), shards=(0, 1))
    assert publish_parts(_args(tmp_path), str(tmp), str(tmp_path / "iter_0000004"), 4) == []
    assert (tmp_path / TRACKER_FILENAME).read_text() == "4"
    assert sorted(os.listdir(tmp_path / "iter_0000004")) == ["mp_rank_00_000", "mp_rank_00_001"]
    state = torch.load(tmp_path / "iter_0000004" / "mp_rank_00_001" / "distrib_optim.pt")
    world = state[0][torch.float32]
    assert world["param"].tolist() == [1.0, 2.0, 3.0]  # the padding (4.0) is dropped
    assert world["numel_unpadded"] == 3 and state["buckets_coalesced"]


def test_a_missing_part_publishes_nothing(tmp_path):
    tmp = tmp_path / "iter_0000004.tmp"
    _write_parts(tmp, stages=(0, 1), shards=(0,))
    (tmp / "mp_rank_00_000" / "model_optim_rng.pt").unlink()
    missing = publish_parts(_args(tmp_path), str(tmp), str(tmp_path / "iter_0000004"), 4)
    assert missing == ["mp_rank_00_000/model_optim_rng.pt",
                       "parts/mp_rank_00_000/distrib_optim.pt.1",
                       "parts/mp_rank_00_001/distrib_optim.pt.1"]
    assert os.listdir(tmp_path) == []  # no tracker, no iteration directory, no .tmp
