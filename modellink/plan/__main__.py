"""`python -m modellink.plan`: see modellink/plan/cli.py."""
import sys

from modellink.errors import run_cli
from modellink.plan.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
