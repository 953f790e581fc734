"""Generation and chat: `torchrun --nproc-per-node N inference.py <Megatron flags> --task ...`."""
import sys

from modellink.inference.tasks import main

if __name__ == "__main__":
    sys.exit(main())
