"""bench/procfs.wait_changed, the harness's eye for a crash's replacement: a pid it reads
before that pid's process shows in /proc is looked at again, not dropped for good (a bench
run at N = 5,000 once reported a replacement that orch had started as never seen).

The kernel counts a pid in ns_last_pid early in fork, before the new process can be found
in /proc; the test makes that window as wide as it likes by moving ns_last_pid itself
(root, as CI runs): the harness first finds a range of pids with nothing behind them, and
the process it waits for then gets one of them."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from bench import procfs

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
AHEAD = 300


def test_a_pid_that_was_not_there_yet_is_looked_at_again(tmp_path):
    since = procfs.last_pid()
    if since + 2 * AHEAD > procfs._PID_MAX:  # near the top: start low (used pids are skipped)
        NS_LAST_PID.write_text("2000")
        since = procfs.last_pid()
    token = f"0.{since:06d}{os.getpid() % 1000:03d}1"  # a second argument sleep adds to its 30 s
    NS_LAST_PID.write_text(str(since + AHEAD))  # since+1 .. since+AHEAD: handed out, nothing there
    seen: dict[str, object] = {}

    def harness() -> None:  # looks at once, then every 0.5 s
        try:
            seen["took"] = procfs.wait_changed({token}, set(), since, 3.0, 0.5)
        except TimeoutError as exc:
            seen["error"] = exc
    thread = threading.Thread(target=harness)
    thread.start()
    proc = None
    try:
        time.sleep(0.1)  # the harness has read every pid of the range, found none, and sleeps
        NS_LAST_PID.write_text(str(since + 9))  # the process gets a pid the harness has read...
        proc = subprocess.Popen(["sleep", "30", token])
        NS_LAST_PID.write_text(str(since + 2 * AHEAD))  # ...and the count moves on past the range
        thread.join(8)
        assert since < proc.pid <= since + AHEAD, "the new process got a pid outside the range the test set up"
        assert "took" in seen, seen.get("error")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(5)
        thread.join(8)
