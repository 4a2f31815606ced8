"""Example tasks for configs/tasks.toml: imported by the TaskWorkers (kwargs.imports) and by
producers alike. Run a producer from the configs/ folder:

    cd configs && python -c "from app.jobs import add; print(add.put(a=2, b=3).result(timeout=10))"
"""

import os
import time

from orchestrator.tasks import TaskQueue

queue = TaskQueue(os.environ.get("TASKS_URL", "redis://127.0.0.1:6379/0"))


@queue.task("default", max_attempts=3, timeout="10s")
def add(a, b):
    """Trivial: a + b."""
    return a + b


@queue.task("reports", max_attempts=5, timeout="60s")
def report(name, rows=1000):
    """A slower task: pretend to build a report, return its summary."""
    time.sleep(min(rows, 100000) / 100000)
    return {"name": name, "rows": rows, "by": os.getpid()}
