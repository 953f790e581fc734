"""Convert checkpoints between Hugging Face and Megatron layouts.

The same as tools/checkpoint/convert_ckpt.py (ModelLink ships both).
"""
import os
import sys

# Conversion allocates every tensor fresh; transparent huge pages cut the page-fault cost of
# that several-fold (torch reads this before its first allocation).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from modellink.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
