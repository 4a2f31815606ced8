"""expand(): matrix/include/exclude/replicas, rendering, naming, argv safety and hashes."""

from __future__ import annotations

import itertools
import json
import subprocess
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import examples
from hypothesis import given, settings, strategies as st
from jinja2.sandbox import SandboxedEnvironment

from orchestrator.config.load import load_config
from orchestrator.errors import ConfigError
from orchestrator.expand.render import expand, summary

ROOT = Path(__file__).resolve().parent.parent


def _t(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def specs_of(tmp_path: Path, text: str, filename: str = "workers.toml"):
    path = tmp_path / filename
    path.write_text(_t(text))
    return expand(load_config(path))


def by_name(specs):
    return {s.name: s for s in specs}


# --- matrix, include, exclude, replicas -------------------------------------------------

@pytest.mark.parametrize("extra,expected", [
    ("", [(1, "x"), (1, "y"), (2, "x"), (2, "y")]),
    ('include = [{ a = 3, b = "z" }]', [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "z")]),
    ('include = [{ a = 1, b = "x" }]', [(1, "x"), (1, "y"), (2, "x"), (2, "y")]),
    ('exclude = [{ b = "x" }]', [(1, "y"), (2, "y")]),
    ('exclude = [{ a = 2, b = "y" }]', [(1, "x"), (1, "y"), (2, "x")]),
    ('exclude = [{ a = 1 }, { b = "y" }]', [(2, "x")]),
    ('exclude = [{ a = 1 }]\ninclude = [{ a = 1, b = "x" }, { a = 9, b = "q" }]',
     [(2, "x"), (2, "y"), (1, "x"), (9, "q")]),
])
def test_matrix_product_include_exclude(tmp_path, extra, expected):
    specs = specs_of(tmp_path, """
        [workers.t]
        command = "echo {{ a }} {{ b }}"
        matrix = { a = [1, 2], b = ["x", "y"] }
        """ + extra + "\n")
    assert [(dict(s.params)["a"], dict(s.params)["b"]) for s in specs] == expected
    assert [s.argv for s in specs] == [("echo", str(a), b) for a, b in expected]
    assert [s.name for s in specs] == [f"t-{a}-{b}" for a, b in expected]


def test_demo_config_expands_to_the_documented_instances():
    config = load_config(ROOT / "configs" / "workers.toml")
    specs = expand(config)
    assert [s.name for s in specs] == [
        "producer", "consumer-10.0.0.1-queue1", "consumer-10.0.0.1-queue2",
        "consumer-10.0.0.2-queue1", "consumer-10.0.0.3-urgent"]
    consumers = by_name(specs)
    assert dict(consumers["consumer-10.0.0.3-urgent"].env) == {"REDIS_HOST": "10.0.0.3"}
    assert consumers["consumer-10.0.0.2-queue1"].argv[:3] == (sys.executable, "-m", "orchestrator.demo.consumer")
    assert summary(config, specs) == f"{config.path}: ok, 2 templates, 5 instances"


def test_replicas_and_replica_variable(tmp_path):
    specs = specs_of(tmp_path, """
        [workers.w]
        command = "echo {{ ip }} {{ replica }}"
        matrix = { ip = ["a", "b"] }
        replicas = 3
        """)
    assert [s.name for s in specs] == ["w-a", "w-a-1", "w-a-2", "w-b", "w-b-1", "w-b-2"]
    assert [s.replica for s in specs] == [0, 1, 2, 0, 1, 2]
    assert [s.argv[2] for s in specs] == ["0", "1", "2", "0", "1", "2"]


@pytest.mark.parametrize("body,names", [
    ('command = "echo"', ["solo"]),
    ('command = "echo"\nreplicas = 2', ["solo", "solo-1"]),
    ('command = "echo"\nmatrix = { v = ["a b/c", "10.0.0.1"] }', ["solo-a_b_c", "solo-10.0.0.1"]),
    ('command = "echo"\nmatrix = { v = [true, 2] }', ["solo-true", "solo-2"]),
    ('command = "echo"\nname = "x-{{ template }}-{{ replica }}"\nreplicas = 2', ["x-solo-0", "x-solo-1"]),
    ('command = "echo"\nname = "{{ v | upper }}"\nmatrix = { v = ["a", "b"] }', ["A", "B"]),
])
def test_names(tmp_path, body, names):
    specs = specs_of(tmp_path, "[workers.solo]\n" + body + "\n")
    assert [s.name for s in specs] == names


def test_name_is_available_to_the_command(tmp_path):
    (spec,) = specs_of(tmp_path, """
        [workers.w]
        command = "run --name {{ name }} --tpl {{ template }}"
        name = "custom-{{ replica }}"
        """)
    assert spec.argv == ("run", "--name", "custom-0", "--tpl", "w")


# --- vars, types --------------------------------------------------------------------------

def test_vars_and_matrix_axis_from_expression(tmp_path):
    specs = specs_of(tmp_path, """
        [vars]
        queues = ["q1", "q2", "q3"]
        ns = [1, 2]
        db = "x.sqlite"

        [workers.c]
        command = "consume --queue {{ queue }} --db {{ db }} --n {{ n }}"
        matrix = { queue = "{{ queues }}", n = "{{ ns }}" }
        exclude = [{ queue = "q2" }]
        """)
    assert [s.name for s in specs] == ["c-q1-1", "c-q1-2", "c-q3-1", "c-q3-2"]
    assert dict(specs[0].params) == {"queue": "q1", "n": 1}
    assert specs[0].argv == ("consume", "--queue", "q1", "--db", "x.sqlite", "--n", "1")


def test_matrix_axis_from_range_expression(tmp_path):
    specs = specs_of(tmp_path, """
        [workers.c]
        command = "echo {{ i }}"
        matrix = { i = "{{ range(3) }}" }
        """)
    assert [dict(s.params)["i"] for s in specs] == [0, 1, 2]


def test_toml_types_kept_in_matrix(tmp_path):
    specs = specs_of(tmp_path, """
        [workers.c]
        command = "echo {{ 'a' if n == 7 else 'b' }} {{ n + 1 }}"
        matrix = { n = [7, 8] }
        """)
    assert [s.argv for s in specs] == [("echo", "a", "8"), ("echo", "b", "9")]


def test_python_builtin_and_override(tmp_path):
    (spec,) = specs_of(tmp_path, '[workers.p]\ncommand = "{{ python }} -m x"\n')
    assert spec.argv == (sys.executable, "-m", "x")
    (spec,) = specs_of(tmp_path, '[vars]\npython = "/opt/py"\n[workers.p]\ncommand = "{{ python }} -m x"\n')
    assert spec.argv == ("/opt/py", "-m", "x")


# --- env, cwd, command forms --------------------------------------------------------------

def test_env_rendered_per_instance(tmp_path):
    specs = specs_of(tmp_path, """
        [workers.c]
        command = "echo"
        matrix = { ip = ["10.0.0.1", "10.0.0.2"] }
        env = { REDIS_HOST = "{{ ip }}", PORT = 8000, DEBUG = true, URL = "redis://{{ ip }}:6379/0", RAW = "plain" }
        inherit = false
        """)
    assert [dict(s.env) for s in specs] == [
        {"REDIS_HOST": ip, "PORT": "8000", "DEBUG": "true", "URL": f"redis://{ip}:6379/0", "RAW": "plain"}
        for ip in ("10.0.0.1", "10.0.0.2")]
    assert all(list(s.env) == sorted(s.env) for s in specs)
    assert not specs[0].inherit_env


def test_defaults_env_merged_with_template_env(tmp_path):
    (spec,) = specs_of(tmp_path, """
        [defaults]
        env = { A = "1", B = "2" }

        [workers.c]
        command = "echo"
        env = { B = "override", C = "3" }
        """)
    assert dict(spec.env) == {"A": "1", "B": "override", "C": "3"}


@pytest.mark.parametrize("cwd_line,relative", [
    ("", "."),
    ('cwd = "sub"', "sub"),
    ('cwd = "sub/{{ ip }}"', "sub/1"),
    ('cwd = "../elsewhere"', "../elsewhere"),
])
def test_cwd_relative_to_config_folder(tmp_path, monkeypatch, cwd_line, relative):
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the process cwd must not matter
    (spec,) = specs_of(folder, f'[workers.c]\ncommand = "echo"\nmatrix = {{ ip = ["1"] }}\n{cwd_line}\n')
    assert spec.cwd == str((folder / relative).resolve())


def test_absolute_cwd_kept(tmp_path):
    (spec,) = specs_of(tmp_path, '[workers.c]\ncommand = "echo"\ncwd = "/"\n')
    assert spec.cwd == "/"


@pytest.mark.parametrize("command,argv", [
    ('"prog -a  \'b c\' d"', ("prog", "-a", "b c", "d")),
    ('"prog {{ v }} \'b c\'"', ("prog", "V", "b c")),
    ('["prog", "{{ v }}", "b c", "$HOME"]', ("prog", "V", "b c", "$HOME")),
    ('"prog --x={{ v }}-suffix"', ("prog", "--x=V-suffix")),
])
def test_command_string_vs_array(tmp_path, command, argv):
    (spec,) = specs_of(tmp_path, f'[vars]\nv = "V"\n[workers.c]\ncommand = {command}\n')
    assert spec.argv == argv


# --- injection safety -----------------------------------------------------------------------

NASTY = ["x; rm -rf / $(id)", "a b", "it's", 'say "hi"', "`id`", "$HOME", "", "a\\b", "tab\there", "new\nline", "'", "--"]
ARGV_TEMPLATES = [
    ('"prog {{ v }} end"', lambda v: ("prog", v, "end")),
    ('"prog --opt \'{{ v }}\'"', lambda v: ("prog", "--opt", v)),
    ("'prog --opt \"{{ v }}\"'", lambda v: ("prog", "--opt", v)),
    ('"prog --opt={{ v }}"', lambda v: ("prog", "--opt=" + v)),
    ('["prog", "{{ v }}"]', lambda v: ("prog", v)),
]


@pytest.mark.parametrize("value", NASTY)
@pytest.mark.parametrize("command,expected", ARGV_TEMPLATES)
def test_value_stays_one_argv_element(tmp_path, value, command, expected):
    (spec,) = specs_of(tmp_path, f"[vars]\nv = {json.dumps(value)}\n[workers.c]\ncommand = {command}\n")
    assert spec.argv == expected(value)


@pytest.mark.parametrize("value", ["x; rm -rf / $(id)", "a b", "it's", "$HOME", ""])
def test_shell_true_quotes_the_value(tmp_path, value):
    (spec,) = specs_of(tmp_path, f'[vars]\nv = {json.dumps(value)}\n[workers.c]\nshell = true\ncommand = "prog --opt {{{{ v }}}}"\n')
    assert spec.argv == ("/bin/sh", "-c", f"prog --opt {shlex.quote(value)}")
    # shlex.split applies POSIX shell word splitting and quote removal.
    assert shlex.split(spec.argv[2]) == ["prog", "--opt", value]


@pytest.mark.parametrize("command", [
    '"prog --opt \'{{ v }}\'"',
    "'prog --opt \"{{ v }}\"'",
])
def test_shell_true_value_inside_template_quotes_stays_one_word(tmp_path, command):
    value = "x; rm -rf / $(id)"
    (spec,) = specs_of(tmp_path, f"[vars]\nv = {json.dumps(value)}\n[workers.c]\nshell = true\ncommand = {command}\n")
    assert spec.argv[:2] == ("/bin/sh", "-c")
    # The oracle is a real /bin/sh: `prog` prints each argument it gets on its own line, so
    # the value must arrive as one literal word and `$(id)` must not run.
    script = "prog() { for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done; }; " + spec.argv[2]
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10).stdout
    assert out.splitlines() == ["[--opt]", f"[{value}]"]


def test_shell_true_keeps_shell_syntax_of_the_template(tmp_path):
    (spec,) = specs_of(tmp_path, """
        [workers.c]
        shell = true
        command = "prog {{ v }} | tee out.log && echo $HOME"
        matrix = { v = ["a b"] }
        """)
    assert spec.argv == ("/bin/sh", "-c", "prog 'a b' | tee out.log && echo $HOME")


# --- Python workers -------------------------------------------------------------------------

def test_python_target_specs(tmp_path):
    specs = specs_of(tmp_path, """
        [workers.py]
        target = "pkg.mod:Worker"
        kwargs = { ip = "{{ ip }}", n = "{{ 2 * 3 }}", raw = 5, label = "w-{{ ip }}" }
        matrix = { ip = ["1", "2"] }
        pythonpath = ["lib"]
        preload = true
        check_point = "2s"
        """)
    assert [s.name for s in specs] == ["py-1", "py-2"]
    spec = specs[0]
    assert spec.python is not None
    assert spec.python.target == "pkg.mod:Worker"
    assert spec.python.kwargs == (("ip", "1"), ("label", "w-1"), ("n", 6), ("raw", 5))
    assert spec.python.preload is True
    assert spec.python.check_point == 2.0
    assert spec.python.pythonpath == (str(tmp_path), str((tmp_path / "lib").resolve()))
    argv = list(spec.argv)
    assert argv[0] == sys.executable
    assert argv[argv.index("--target") + 1] == "pkg.mod:Worker"
    assert argv[argv.index("--name") + 1] == "py-1"
    assert json.loads(argv[argv.index("--kwargs") + 1]) == {"ip": "1", "label": "w-1", "n": 6, "raw": 5}
    assert specs[0].process_hash != specs[1].process_hash


# --- hashes -----------------------------------------------------------------------------------

BASE = """
[orchestrator]
name = "h"

[workers.c]
command = "run --ip {{ ip }}"
matrix = { ip = ["1", "2"] }
env = { A = "{{ ip }}", B = "b", C = "c" }
stop_timeout = "5s"
restart = "always"
"""
REORDERED = """
[workers.c]
restart = "always"
stop_timeout = "5s"
env = { C = "c", A = "{{ ip }}", B = "b" }
matrix = { ip = ["1", "2"] }
command = "run --ip {{ ip }}"

[orchestrator]
name = "h"
"""


def _hashes(specs):
    return {s.name: (s.process_hash, s.policy_hash) for s in specs}


def test_same_file_twice_gives_identical_specs(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text(BASE)
    first, second = expand(load_config(path)), expand(load_config(path))
    assert first == second
    assert _hashes(first) == _hashes(second)
    assert all(len(s.process_hash) == 16 and len(s.policy_hash) == 16 for s in first)
    assert len({s.process_hash for s in first}) == 2


def test_reordering_keys_does_not_change_hashes(tmp_path):
    a = specs_of(tmp_path / "", BASE, "a.toml")
    b = specs_of(tmp_path, REORDERED, "b.toml")
    assert _hashes(a) == _hashes(b)


@pytest.mark.parametrize("old,new", [
    ('stop_timeout = "5s"', 'stop_timeout = "6s"'),
    ('restart = "always"', 'restart = "on-failure"'),
    ('restart = "always"', 'restart = "always"\nbackoff = { max = "5m" }'),
    ('restart = "always"', 'restart = "always"\nmemory = { hard = "1GiB" }'),
    ('restart = "always"', 'restart = "always"\nstop_signal = "INT"'),
    ('restart = "always"', 'restart = "always"\nmin_uptime = "1m"'),
    ('restart = "always"', 'restart = "always"\nmax_requests = 1000'),
])
def test_policy_change_changes_only_policy_hash(tmp_path, old, new):
    before = _hashes(specs_of(tmp_path, BASE, "a.toml"))
    after = _hashes(specs_of(tmp_path, BASE.replace(old, new), "b.toml"))
    assert before.keys() == after.keys()
    for name in before:
        assert after[name][0] == before[name][0]
        assert after[name][1] != before[name][1]


@pytest.mark.parametrize("old,new", [
    ('"run --ip {{ ip }}"', '"run --ip {{ ip }} --verbose"'),
    ('B = "b"', 'B = "bee"'),
    ('B = "b"', 'B = "b", D = "d"'),
    ('restart = "always"', 'restart = "always"\ncwd = "sub"'),
    ('restart = "always"', 'restart = "always"\ninherit = false'),
])
def test_process_change_changes_process_hash(tmp_path, old, new):
    before = _hashes(specs_of(tmp_path, BASE, "a.toml"))
    after = _hashes(specs_of(tmp_path, BASE.replace(old, new), "b.toml"))
    for name in before:
        assert after[name][0] != before[name][0]
        assert after[name][1] == before[name][1]


# --- compile once -------------------------------------------------------------------------------

def test_each_template_string_compiles_once_per_load(tmp_path, monkeypatch):
    calls = []
    original = SandboxedEnvironment.from_string

    def counting(self, source, *args, **kwargs):
        calls.append(source)
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(SandboxedEnvironment, "from_string", counting)
    text = """
        [vars]
        ips = {ips}

        [workers.c]
        command = "run --ip {{{{ ip }}}} --q {{{{ q }}}} --opt '{{{{ q }}}}'"
        name = "c-{{{{ ip }}}}-{{{{ q }}}}"
        matrix = {{ ip = "{{{{ ips }}}}", q = ["a", "b", "c", "d", "e"] }}
        env = {{ HOST = "{{{{ ip }}}}", URL = "x://{{{{ ip }}}}" }}
        cwd = "work/{{{{ q }}}}"
        kwargs = {{}}
        """
    counts = []
    for n in (1, 10):
        calls.clear()
        specs = specs_of(tmp_path, text.format(ips=json.dumps([f"10.0.0.{i}" for i in range(n)])))
        assert len(specs) == 5 * n
        counts.append(len(calls))
    assert counts[0] == counts[1]
    assert counts[1] <= 6


# --- property ----------------------------------------------------------------------------------

VALUE = st.text(alphabet="abcxyz0123", min_size=1, max_size=3)


@st.composite
def matrices(draw):
    n_axes = draw(st.integers(1, 3))
    axes = {f"a{i}": draw(st.lists(VALUE, min_size=1, max_size=4, unique=True)) for i in range(n_axes)}
    excludes = [{k: draw(st.sampled_from(v)) for k, v in axes.items() if draw(st.booleans())}
                for _ in range(draw(st.integers(0, 2)))]
    excludes = [e for e in excludes if e]  # an empty entry is an error (it would exclude everything)
    includes = [{k: draw(st.one_of(st.sampled_from(v), VALUE)) for k, v in axes.items()}
                for _ in range(draw(st.integers(0, 2)))]
    replicas = draw(st.integers(1, 3))
    return axes, excludes, includes, replicas


def _inline(d):
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


@settings(max_examples=examples(60), deadline=None)
@given(matrices())
def test_expansion_property(tmp_path_factory, case):
    axes, excludes, includes, replicas = case
    folder = tmp_path_factory.mktemp("prop")
    text = (f'[workers.t]\ncommand = "run {" ".join("{{ " + k + " }}" for k in axes)} {{{{ replica }}}}"\n'
            f"matrix = {_inline(axes)}\nreplicas = {replicas}\n"
            f"exclude = [{', '.join(_inline(e) for e in excludes)}]\n"
            f"include = [{', '.join(_inline(i) for i in includes)}]\n")
    path = folder / "workers.toml"
    path.write_text(text)
    specs = expand(load_config(path))
    assert specs == expand(load_config(path))

    product = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    kept = [c for c in product if not any(all(c[k] == v for k, v in e.items()) for e in excludes)]
    added = []
    for inc in includes:
        if inc not in kept and inc not in added:
            added.append(inc)
    expected = kept + added
    assert len(specs) == len(expected) * replicas
    assert [dict(s.params) for s in specs] == [c for c in expected for _ in range(replicas)]
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        assert spec.argv == ("run", *(str(v) for _, v in spec.params), str(spec.replica))


def test_cwd_rendered_per_instance(tmp_path):
    specs = specs_of(tmp_path, '[workers.c]\ncommand = "echo"\ncwd = "w/{{ ip }}"\nmatrix = { ip = ["1", "2"] }\n')
    assert [s.cwd for s in specs] == [str((tmp_path / "w" / ip).resolve()) for ip in ("1", "2")]


@pytest.mark.parametrize("extra,message", [
    ('exclude = [{ c = 1 }]', "workers.t.exclude: entry 1: 'c' is not an axis (axes: a, b)"),
    ('exclude = [{ a = 1 }, { a = 2, bb = "x" }]', "workers.t.exclude: entry 2: 'bb' is not an axis"),
    ('include = [{ a = 3, b = "z", c = 0 }]', "workers.t.include: entry 1: 'c' is not an axis"),
    ('include = [{ a = 3 }]', "workers.t.include: entry 1: no value for the axis 'b'"),
    ('exclude = [{}]', "workers.t.exclude: entry 1: an empty entry would exclude every combination"),
])
def test_include_and_exclude_entries_name_only_the_axes(tmp_path, extra, message):
    path = tmp_path / "workers.toml"
    path.write_text('[workers.t]\ncommand = "echo {{ a }} {{ b }}"\nmatrix = { a = [1, 2], b = ["x", "y"] }\n'
                    + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        expand(load_config(path))
    assert f"{path}:4: {message}" in str(caught.value)


def test_an_entry_on_a_template_without_a_matrix_is_an_error(tmp_path):
    path = tmp_path / "workers.toml"
    path.write_text('[workers.t]\ncommand = "echo"\nexclude = [{ a = 1 }]\n')
    with pytest.raises(ConfigError, match="'a' is not an axis \\(axes: none: the template has no matrix\\)"):
        expand(load_config(path))
