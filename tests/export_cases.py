"""Configs for the export tests: commands and environment values full of what exporters quote
wrong (quotes, %, $, backslashes, spaces, ; and #, non-ASCII), and helpers to load them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import orch

from orchestrator.config.load import load_config
from orchestrator.expand.render import expand
from orchestrator.export.common import Options
from orchestrator.expand.spec import ProcessSpec

# The sleeper ignores its arguments: they are there to be compared byte for byte.
SLEEPER = "import time; time.sleep(300)"
HARD_ARGS = ["it's", 'say "hi"', "'lead", 'trail"', "both ' and \"", "100%", "%(here)s", "%%", "%n",
             "$HOME", "$(HOME)", "$$", "back\\slash", "trail\\", "two  spaces", " lead", "a;b", "a ;b",
             "x #y", "#z", "naïve ☃ 日本", "", "-dash", "tab\there", "=eq", "*", "~", "`ls`", "!x"]
HARD_ENV = {"QUOTE": "it's", "DQ": 'say "hi" now', "PCT": "100% %(x)s %n", "DOLLAR": "$HOME $(HOME) $$",
            "BS": "back\\slash\\", "SP": "two  spaces ", "SEMI": "a;b, c=d", "UNI": "naïve ☃", "EMPTY": ""}


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string or array is TOML too


def config_text(extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> str:
    """A fleet with a matrix, replicas, a string command, an array command and a Python target."""
    env = {**HARD_ENV, **(extra_env or {})}
    args = HARD_ARGS + (extra_args or [])
    env_table = "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in env.items()) + " }"
    return f"""
[orchestrator]
name = "quoting test"

[vars]
sleeper = {_toml(SLEEPER)}

[workers.argv]
command = {_toml([sys.executable, "-c", SLEEPER] + args)}
env = {env_table}
matrix = {{ q = ["x y", "ünï", "it's"] }}
replicas = 2
stop_signal = "INT"
kill_mode = "mixed"
memory = {{ soft = "100MiB", hard = "200MiB" }}

[workers.string]
command = "{{{{ python }}}} -c '{{{{ sleeper }}}}' '{{{{ q }}}}' \\"a \\\\\\"b\\\\\\" ;c\\" 50% {{{{ replica }}}}"
matrix = {{ q = ["$HOME", "x;y", "100%"] }}
replicas = 2
env = {{ Q = "{{{{ q }}}}", R = "r{{{{ replica }}}}" }}
restart = "on-failure"
timeout = "30s"
max_lifetime = "1h"
cwd = "sub dir"
"""


def write(folder: Path, text: str) -> Path:
    """The config written to `folder`, with its working directories created."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub dir").mkdir(exist_ok=True)
    path = folder / "workers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def specs_of(path: Path) -> list[ProcessSpec]:
    return expand(load_config(path))


def options_of(path: Path, **kw: object) -> Options:
    config = load_config(path)
    return Options(fleet=config.settings.name, config=config.path, folder=config.folder,
                   log_dir=config.settings.log_dir, sockets=config.sockets, **kw)  # type: ignore[arg-type]


def planned(path: Path) -> list[dict]:
    """What `orch up` would run: `orch plan --json`, in a fresh interpreter."""
    result = orch("plan", "--json", "-c", str(path), timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
