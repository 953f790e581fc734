"""Pretrain a GPT-family model: `torchrun --nproc-per-node N pretrain_gpt.py <Megatron-LM flags>`."""
import sys

from modellink.errors import run_cli
from modellink.training.pretrain import pretrain

if __name__ == "__main__":
    sys.exit(run_cli(lambda: pretrain(sys.argv[1:])))
