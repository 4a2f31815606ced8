"""orch needs Linux; elsewhere it says so in one line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys


def test_another_system_gets_a_one_line_error():
    code = ("import sys; sys.platform = 'darwin'; from orchestrator.cli import main; "
            "sys.exit(main(['status']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "orch: needs Linux (this is darwin): it relies on prctl, /proc and child subreapers"]
    assert "Traceback" not in result.stderr
