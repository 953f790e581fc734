"""Post-train a GPT-family model: `torchrun --nproc-per-node N trainer.py --stage sft|dpo|rm
<Megatron-LM flags>` (ModelLink's trainer; sft runs as pretrain_gpt.py does)."""
import sys

from modellink.errors import run_cli
from modellink.training.posttrain.stage import posttrain

if __name__ == "__main__":
    sys.exit(run_cli(lambda: posttrain(sys.argv[1:])))
