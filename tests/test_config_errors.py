"""A corpus of bad config files: each must fail with a located, useful ConfigProblem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.config.load import load_config
from orchestrator.errors import ConfigError
from orchestrator.expand.render import expand

ROOT = Path(__file__).resolve().parent.parent


def _t(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# (toml_text, expected_keypath, expected_message_fragment, expected_line)
CASES = [
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        replicas = = 2
        """), "", "TOML syntax error", 3, id="toml-syntax"),
    pytest.param(_t("""
        [worker.a]
        command = "echo"
        """), "worker", "did you mean 'workers'", 1, id="unknown-top-level-dotted-header"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"

        [orchestrater]
        name = "x"
        """), "orchestrater", "did you mean 'orchestrator'", 4, id="unknown-top-level-table"),
    pytest.param(_t("""
        [workers.consumer]
        comand = "echo hi"
        """), "workers.consumer.comand", "did you mean 'command'", 2, id="unknown-worker-key"),
    pytest.param(_t("""
        [orchestrator]
        graceful_timout = "5s"

        [workers.a]
        command = "echo"
        """), "orchestrator.graceful_timout", "did you mean 'graceful_timeout'", 2,
        id="unknown-orchestrator-key"),
    pytest.param(_t("""
        [orchestrator]
        metrics = "localhost"

        [workers.a]
        command = "echo"
        """), "orchestrator.metrics", "expected HOST:PORT", 2, id="metrics-address"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        replicas = "2"
        """), "workers.a.replicas", "expected a whole number, got a string", 3, id="replicas-string"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        max_requests = 0
        """), "workers.a.max_requests", "at least 1", 3, id="max-requests-zero"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        shell = "yes"
        """), "workers.a.shell", "expected true or false", 3, id="shell-string"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        env = { FOO = { nested = 1 } }
        """), "workers.a.env.FOO", "expected a string or number, got a table", 3, id="env-value-table"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        stop_timeout = "10 parsecs"
        """), "workers.a.stop_timeout", "10 parsecs", 3, id="duration-unit"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        stop_timeout = -1
        """), "workers.a.stop_timeout", "negative", 3, id="duration-negative"),
    pytest.param(_t("""
        [orchestrator]
        check_interval = "0s"

        [workers.a]
        command = "echo"
        """), "orchestrator.check_interval", "longer than zero", 2, id="duration-zero"),
    pytest.param(_t("""
        [orchestrator]
        log_level = "loud"

        [workers.a]
        command = "echo"
        """), "orchestrator.log_level", "expected one of debug, info", 2, id="log-level-enum"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        memory = {soft = "lots"}
        """), "workers.a.memory.soft", "expected a size", 3, id="size-bad"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"

        [workers.a.memory]
        soft = "2GiB"
        hard = "1GiB"
        """), "workers.a.memory.soft", "below the hard limit", 5, id="memory-soft-above-hard"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        stop_signal = "SIGFOO"
        """), "workers.a.stop_signal", "signal name", 3, id="signal-bad"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        restart = "sometimes"
        """), "workers.a.restart", "expected one of always, on-failure, never", 3, id="restart-enum"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ip }}"
        matrix = { ip = [] }
        """), "workers.a.matrix.ip", "empty matrix axis", 3, id="matrix-empty-axis"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ip }}"
        matrix = { ip = 3 }
        """), "workers.a.matrix.ip", "expected an array of values", 3, id="matrix-axis-scalar"),
    pytest.param(_t("""
        [vars]
        n = 3

        [workers.a]
        command = "echo {{ q }}"
        matrix = { q = "{{ n }}" }
        """), "workers.a.matrix.q", "must be a list", 6, id="matrix-expression-not-list"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ip }}"
        matrix = { ip = ["1"] }
        include = ["x"]
        """), "workers.a.include", "array of tables", 4, id="include-not-tables"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ nope }}"
        """), "workers.a.command", "'nope' is undefined", 2, id="undefined-in-command"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        name = "a-{{ nope }}"
        """), "workers.a.name", "'nope' is undefined", 3, id="undefined-in-name"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        env = { FOO = "{{ nope }}" }
        """), "workers.a.env", "'nope' is undefined", 3, id="undefined-in-env"),
    pytest.param(_t("""
        [workers.a]
        replicas = 2
        """), "workers.a", "missing 'command'", 1, id="missing-command"),
    pytest.param(_t("""
        [workers.a]
        command = "   "
        """), "workers.a.command", "command is empty", 2, id="blank-command"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        target = "pkg.mod:Worker"
        """), "workers.a.target", "either 'command' or 'target'", 3, id="command-and-target"),
    pytest.param(_t("""
        [workers.a]
        command = ["echo", "hi"]
        shell = true
        """), "workers.a.shell", "needs command as a string", 3, id="shell-with-array"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ip }} {{ queue }}"
        name = "w-{{ queue }}"
        matrix = { ip = ["1", "2"], queue = ["q1", "q2"] }
        """), "workers.a.name", "duplicate instance name 'w-q1'", 3, id="duplicate-names"),
    pytest.param(_t("""
        [orchestrator]
        max_instances = 3

        [workers.a]
        command = "echo {{ ip }} {{ q }}"
        matrix = { ip = ["1", "2"], q = ["x", "y"] }
        """), "workers.a", "more than 3 instances", 4, id="max-instances"),
    pytest.param(_t("""
        [workers.a]
        command = "echo 'oops"
        """), "workers.a.command", "cannot split the command", 2, id="unbalanced-quotes"),
    pytest.param(_t("""
        [workers.a]
        command = "echo \\"{{ ip }}"
        matrix = { ip = ["1"] }
        """), "workers.a.command", "cannot split the command", 2, id="unbalanced-quotes-templated"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"

        [workers.a.backoff]
        initial = "1m"
        max = "10s"
        """), "workers.a.backoff.initial", "must not exceed backoff.max", 5, id="backoff-initial-above-max"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        backoff = { inital = "1s" }
        """), "workers.a.backoff.inital", "did you mean 'initial'", 3, id="backoff-unknown-key"),
    pytest.param(_t("""
        [defaults]
        matrix = { ip = ["1"] }

        [workers.a]
        command = "echo"
        """), "defaults.matrix", "belongs to a template", 2, id="defaults-matrix"),
    pytest.param(_t("""
        [defaults]
        stop_timeout = "10 parsecs"

        [workers.a]
        command = "echo"
        """), "defaults.stop_timeout", "10 parsecs", 2, id="defaults-bad-value-located-in-defaults"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ip }}"
        name = "worker {{ ip }}"
        matrix = { ip = ["1"] }
        """), "workers.a.name", "without spaces", 3, id="name-with-spaces"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ''.__class__.__mro__ }}"
        """), "workers.a.command", "unsafe", 2, id="sandbox-command"),
    pytest.param(_t("""
        [workers.a]
        command = "echo {{ ''.__class__.__mro__ }}"
        shell = true
        """), "workers.a.command", "unsafe", 2, id="sandbox-shell-command"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        name = "{{ ''.__class__.__mro__ }}"
        """), "workers.a.name", "unsafe", 3, id="sandbox-name"),
    pytest.param(_t("""
        [workers.a]
        command = "echo"
        env = { X = "{{ ''.__class__.__mro__ }}" }
        """), "workers.a.env", "unsafe", 3, id="sandbox-env"),
    pytest.param(_t("""
        workers = "all of them"
        """), "workers", "expected a table of templates", 1, id="workers-not-table"),
]


def _problems(path: Path) -> list:
    with pytest.raises(ConfigError) as info:
        expand(load_config(path))
    return info.value.problems


@pytest.mark.parametrize("text,keypath,fragment,line", CASES)
def test_bad_config_is_located(tmp_path, text, keypath, fragment, line):
    path = tmp_path / "workers.toml"
    path.write_text(text)
    problems = _problems(path)
    matching = [p for p in problems if p.keypath == keypath]
    assert matching, f"no problem at {keypath!r}; got {[str(p) for p in problems]}"
    problem = matching[0]
    assert problem.file == str(path)
    assert fragment in problem.message, str(problem)
    assert problem.line == line, str(problem)
    assert str(problem).startswith(f"{path}:{line}:")


def test_sandbox_violation_does_not_execute(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "workers.toml"
    path.write_text(_t(f"""
        [workers.a]
        command = "echo {{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"
        """))
    problems = _problems(path)
    assert [p.keypath for p in problems] == ["workers.a.command"]
    assert "unsafe" in problems[0].message
    assert not marker.exists()


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "not found" in str(info.value)


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(_t("""
        [orchestrator]
        graceful_timout = "5s"

        [workers.a]
        comand = "echo"
        replicas = "2"

        [workers.b]
        command = "echo"
        stop_signal = "NOPE"
        memory = { soft = "lots" }
        """))
    problems = _problems(path)
    found = {p.keypath: p.line for p in problems}
    assert found == {
        "orchestrator.graceful_timout": 2,
        "workers.a.comand": 5,
        "workers.a.replicas": 6,
        "workers.a": 4,  # missing command
        "workers.b.stop_signal": 10,
        "workers.b.memory.soft": 11,
    }


def test_render_problems_of_several_templates_reported_at_once(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(_t("""
        [workers.a]
        command = "echo {{ nope }}"

        [workers.b]
        command = "echo"
        name = "b-{{ missing }}"
        """))
    problems = _problems(path)
    assert [(p.keypath, p.line) for p in problems] == [("workers.a.command", 2), ("workers.b.name", 6)]


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "check", "-c", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_cli_check_bad_file_exits_2_naming_file_line_and_key(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(_t("""
        [workers.consumer]
        command = "echo"
        stop_timeout = "10 parsecs"
        """))
    result = _check(path)
    assert result.returncode == 2
    first = result.stderr.splitlines()[0]
    assert f"{path}:3:" in first
    assert "workers.consumer.stop_timeout" in first
    assert result.stdout == ""


def test_cli_check_good_file_exits_0_with_one_line(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(_t("""
        [workers.a]
        command = "echo {{ ip }}"
        matrix = { ip = ["1", "2", "3"] }

        [workers.b]
        command = "echo b"
        """))
    result = _check(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"{path}: ok, 2 templates, 4 instances"]
