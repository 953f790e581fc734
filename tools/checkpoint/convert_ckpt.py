"""Convert checkpoints between Hugging Face and Megatron layouts (see modellink.checkpoint)."""
import os
import sys

# Conversion allocates every tensor fresh; transparent huge pages cut the page-fault cost of
# that several-fold (torch reads this before its first allocation).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# Runnable as a script from anywhere: put the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from modellink.checkpoint.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
