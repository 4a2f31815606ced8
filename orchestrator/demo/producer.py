"""Demo producer: `python -m orchestrator.demo.producer --db FILE --queue Q [--queue Q ...]`."""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import sys
import time

from .queue import connect, put


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--queue", action="append", required=True)
    parser.add_argument("--rate", type=float, default=4.0, help="jobs per second")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    db = connect(args.db)
    for n in itertools.count(1):
        queue = random.choice(args.queue)
        put(db, queue, f"job #{n} for {queue}")
        if n % 10 == 0:
            print(f"queued {n} jobs so far", flush=True)
        time.sleep(1 / args.rate)


if __name__ == "__main__":
    main()
