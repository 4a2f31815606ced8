"""The Reloader on a fake clock and spawner: queued reloads replay after the apply in
progress, against the newest file, in milliseconds (supervise/reloader.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from fakes import Replay

from orchestrator.config.load import TemplateCache, load_config
from orchestrator.expand.render import ExpansionCache, expand
from orchestrator.spawn.listeners import Listeners
from orchestrator.supervise.events import OpsIdle
from orchestrator.supervise.reloader import Reloader

ONE = """
[workers.a]
command = "sleep 100"
min_uptime = "0s"
"""
TWO = ONE + """
[workers.b]
command = "sleep 100"
"""
THREE = ONE + """
[workers.c]
command = "sleep 100"
"""


class Host:
    """The master as the reloader sees it, around a Replay's real supervisor."""

    def __init__(self, replay: Replay, path: Path) -> None:
        self.loop, self.supervisor, self.spawner, self.limits = replay.loop, replay.supervisor, replay.spawner, replay.limits
        self.listeners = Listeners()
        self.watcher = None
        self.templates = TemplateCache()
        self.config = load_config(path, self.templates)
        self.settings = self.config.settings
        self.expansions = ExpansionCache()
        self.expansions.seed(self.config, expand(self.config))
        self.applied_at = None
        self.stopping = False

    def _start_watcher(self) -> None:
        pass

    def _release_sockets(self) -> None:
        pass

    def apply_live_settings(self, old, new):  # noqa: ANN001 - no endpoint, socket or pidfile here
        return {}, []

    def config_applied(self) -> None:
        pass


def _save(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def test_a_save_during_an_apply_is_queued_and_applied_after_it_against_the_newest_file(tmp_path):
    replay = Replay(tmp_path, TWO)
    path = tmp_path / "workers.toml"
    try:
        replay.ack()
        host = Host(replay, path)
        reloader = Reloader(host)
        replay.supervisor.events.subscribe(lambda e: isinstance(e, OpsIdle) and reloader.idle())
        reloader._remember_file()

        _save(path, ONE)  # b goes: its stop is an operation in progress until it exits
        assert reloader.request("orch reload", force=True)["applied"]
        replay.turn()
        assert replay.supervisor.pending_ops == 1 and replay.state("b") == "stopping"

        _save(path, TWO)  # saved twice while b is stopping: only the last one counts
        assert reloader.request("file closed")["queued"]
        _save(path, THREE)
        assert reloader.request("file closed")["queued"]
        assert reloader.queued == "file closed" and reloader.count == 1

        replay.exit("b", signum=15)  # the stop is done: the queued reload runs, on THREE
        replay.turn()
        assert reloader.queued is None and reloader.count == 2
        assert sorted(replay.supervisor.instances) == ["a", "c"]
        assert reloader.request("file closed")["reason"] == "unchanged"
    finally:
        replay.close()


def test_an_explicit_reload_outranks_a_queued_save(tmp_path):
    replay = Replay(tmp_path, TWO)
    path = tmp_path / "workers.toml"
    try:
        replay.ack()
        reloader = Reloader(Host(replay, path))
        reloader._remember_file()
        _save(path, ONE)
        reloader.request("orch reload", force=True)
        replay.turn()
        reloader.request("file closed")
        reloader.request("SIGHUP")
        reloader.request("file modified")
        assert reloader.queued == "SIGHUP"
    finally:
        replay.close()
