"""Run without a launcher: several `inference.py` runs one after the other in one process, so
that they share its start-up (imports take longer than a tiny model's generation).

MODELLINK_TEST_RUNS is a JSON list of runs {"args": [...], "out": PATH}: each run's stdout goes
to its `out`, and so does its traceback if it fails, after which the next run still starts, so
a test can report each run's failure as its own. Each run is a world of one on a port of its
own: inference.py destroys its process group when it ends, and a new one cannot rendezvous
on the old one's store.
"""
import contextlib
import json
import os
import traceback

from conftest import _free_port
from modellink.inference.tasks import run


def main() -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    for spec in json.loads(os.environ["MODELLINK_TEST_RUNS"]):
        os.environ["MASTER_PORT"] = str(_free_port())
        with open(spec["out"], "w") as out, contextlib.redirect_stdout(out):
            try:
                run(spec["args"])
            except (Exception, SystemExit):  # argparse exits; the next run goes on either way
                traceback.print_exc(file=out)


if __name__ == "__main__":
    main()
