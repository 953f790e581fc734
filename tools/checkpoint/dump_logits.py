"""Load Megatron checkpoints at their own layout and save the model's logits for given tokens.

Run under torchrun with as many ranks as the layouts need; every job is one set of
`pretrain_gpt.py` flags (with --load) run in turn in the same process group, so one launch
can check many checkpoints:

    torchrun --nproc-per-node 2 tools/checkpoint/dump_logits.py jobs.json

jobs.json: [{"argv": [...flags...], "tokens": [[1, 2, 3]], "out": "logits.pt"}, ...]
The last pipeline stage's first tensor-parallel, data-parallel rank writes `out`
(float32 logits [batch, seq, padded vocab]).
"""
import json
import os
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from megatron.core import parallel_state, tensor_parallel  # noqa: E402
from megatron.core.num_microbatches_calculator import (  # noqa: E402
    destroy_num_microbatches_calculator)

from modellink.arguments import parse_args  # noqa: E402
from modellink.errors import run_cli  # noqa: E402
from modellink.models.gpt import build_model_chunks, transformer_config_from_args  # noqa: E402
from modellink.training.checkpoint.checkpointing import load_checkpoint  # noqa: E402
from modellink.training.initialize import initialize  # noqa: E402


def _pipeline_forward(chunks: List[torch.nn.Module], tokens: torch.Tensor, hidden_shape: tuple,
                      dtype: torch.dtype) -> torch.Tensor:
    """Run the chunks in pipeline order with plain send/recv; logits on the last stage."""
    first = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)
    output = None
    for index, chunk in enumerate(chunks):
        if not (first and index == 0):
            # On the device: NCCL and HCCL refuse host tensors.
            hidden = torch.empty(hidden_shape, dtype=dtype, device=torch.cuda.current_device())
            torch.distributed.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
            chunk.set_input_tensor(hidden)
        output = chunk(tokens, position_ids, None)
        if not (last and index == len(chunks) - 1):
            torch.distributed.send(output.contiguous(),
                                   parallel_state.get_pipeline_model_parallel_next_rank())
    return output


@torch.no_grad()
def run_job(job: dict) -> None:
    args = parse_args(job["argv"])
    backend = initialize(args)
    try:
        config = transformer_config_from_args(args, backend.device)
        chunks = build_model_chunks(args, config)
        load_checkpoint(args, chunks, None, None)
        for chunk in chunks:
            chunk.eval()
        tokens = torch.tensor(job["tokens"], dtype=torch.long)
        seq = tokens.shape[1] // (args.tensor_model_parallel_size if args.sequence_parallel else 1)
        output = _pipeline_forward(chunks, tokens, (seq, tokens.shape[0], args.hidden_size),
                                   config.params_dtype)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            logits = tensor_parallel.gather_from_tensor_model_parallel_region(output)
            if (parallel_state.get_tensor_model_parallel_rank() == 0
                    and parallel_state.get_data_parallel_rank() == 0):
                torch.save(logits.float(), job["out"])
    finally:
        destroy_num_microbatches_calculator()
        parallel_state.destroy_model_parallel()


def main() -> None:
    with open(sys.argv[1]) as handle:
        jobs = json.load(handle)
    for job in jobs:
        run_job(job)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_cli(main))
