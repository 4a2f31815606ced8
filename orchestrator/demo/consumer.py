"""Demo consumer: `python -m orchestrator.demo.consumer --ip IP --queue QUEUE --db FILE`.

Takes jobs from one queue, "works" on them, and stops cleanly on SIGTERM after the job
in hand (the behaviour orch's graceful stop relies on).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from .queue import claim, connect, finish

stopping = False


def _stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", required=True, help="the server this consumer would talk to")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--work", type=float, default=0.3, help="seconds per job")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    db = connect(args.db)
    me = os.environ.get("ORCH_INSTANCE", f"{args.ip}/{args.queue}")
    print(f"consumer {me} (pid {os.getpid()}) watching queue {args.queue!r} at {args.ip}", flush=True)
    while not stopping:
        job = claim(db, args.queue, me)
        if job is None:
            time.sleep(0.5)
            continue
        time.sleep(args.work)
        finish(db, job[0])
        print(f"done job {job[0]}: {job[1]}", flush=True)
    print("SIGTERM: finished the job in hand, exiting", flush=True)


if __name__ == "__main__":
    main()
