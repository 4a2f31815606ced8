"""Jinja is imported by the master only once a config string needs it (expand/render.py)."""

from __future__ import annotations

from pathlib import Path

import markupsafe

from conftest import wait_for

SPEEDUPS = Path(markupsafe.__file__).parent  # Jinja's markupsafe maps its C extension from here


def jinja_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert any(p.name.startswith("_speedups") and p.suffix == ".so" for p in SPEEDUPS.iterdir()), \
        "markupsafe's C extension is not installed: this test cannot see whether Jinja is loaded"
    return str(SPEEDUPS) in maps


def test_a_config_without_jinja_syntax_never_loads_jinja_until_one_needs_it(start_master):
    master = start_master("""
        [workers.plain]
        command = ["sleep", "60"]
        replicas = 2
        """)
    master.wait_running(2)
    assert not jinja_loaded(master.pid)
    master.write("""
        [workers.plain]
        command = ["sleep", "60"]
        replicas = 2

        [workers.q]
        command = "sleep {{ 60 + n }}"
        name = "q-{{ n }}"
        matrix = { n = [1, 2] }
        """)
    rows = wait_for(lambda: (lambda r: r if {"q-1", "q-2"} <= set(r) else None)(master.status()), 10,
                    message="the templated instances")
    assert rows["q-2"]["state"] in ("starting", "running")
    assert jinja_loaded(master.pid)


def test_a_config_with_jinja_syntax_loads_it_at_start(start_master):
    master = start_master("""
        [workers.q]
        command = "sleep {{ 60 }}"
        """)
    master.wait_running(1)
    assert jinja_loaded(master.pid)
