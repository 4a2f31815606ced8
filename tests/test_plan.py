"""reconcile(): desired specs vs running instances -> start/stop/restart/update/keep."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from orchestrator.config.load import Policy, load_config
from orchestrator.expand.render import expand
from orchestrator.plan import Plan, Running, describe, reconcile
from orchestrator.expand.spec import ProcessSpec


def spec(name: str, argv=("run",), env=(), policy: Policy = Policy(), cwd="/srv") -> ProcessSpec:
    return ProcessSpec(name=name, template="t", params=(), replica=0, argv=tuple(argv), env=tuple(env),
                       inherit_env=True, cwd=cwd, policy=policy).with_hashes()


def running_of(specs) -> dict[str, Running]:
    return {s.name: Running(s.process_hash, s.policy_hash) for s in specs}


def names(plan: Plan) -> dict[str, list[str]]:
    return {"start": [s.name for s in plan.start], "stop": list(plan.stop),
            "restart": [s.name for s in plan.restart], "update": [s.name for s in plan.update],
            "keep": list(plan.keep)}


A, B, C = spec("a"), spec("b"), spec("c")
A_ARGV = spec("a", argv=("run", "--new"))
A_ENV = spec("a", env=(("X", "1"),))
A_CWD = spec("a", cwd="/elsewhere")
A_POLICY = spec("a", policy=Policy(stop_timeout=3.0))
A_BOTH = spec("a", argv=("run", "--new"), policy=Policy(stop_timeout=3.0))


@pytest.mark.parametrize("desired,running,expected", [
    ([], [], {}),
    ([A, B], [], {"start": ["a", "b"]}),
    ([], [A, B], {"stop": ["a", "b"]}),
    ([A, B], [A, B], {"keep": ["a", "b"]}),
    ([A, C], [A, B], {"start": ["c"], "stop": ["b"], "keep": ["a"]}),
    ([A_ARGV], [A], {"restart": ["a"]}),
    ([A_ENV], [A], {"restart": ["a"]}),
    ([A_CWD], [A], {"restart": ["a"]}),
    ([A_POLICY], [A], {"update": ["a"]}),
    ([A_BOTH], [A], {"restart": ["a"]}),
    ([A_ARGV, B, C], [A, B, spec("d")], {"restart": ["a"], "keep": ["b"], "start": ["c"], "stop": ["d"]}),
    ([C, B, A], [A, B, C], {"keep": ["c", "b", "a"]}),
])
def test_classification(desired, running, expected):
    plan = reconcile(desired, running_of(running))
    full = {"start": [], "stop": [], "restart": [], "update": [], "keep": []}
    full.update(expected)
    assert names(plan) == full
    assert plan.empty == (not any(full[k] for k in ("start", "stop", "restart", "update")))
    assert plan.counts() == {k: len(v) for k, v in full.items()}


@pytest.mark.parametrize("desired,running", [
    ([A_ARGV, B, C], [A, B, spec("d")]), ([A_POLICY, B], [A, B]), ([A_BOTH], [A]), ([C, B, A], [A, B, C])])
def test_the_running_specs_themselves_diff_as_their_hashes(desired, running):
    """The supervisor's view hands reconcile each slot's target spec, not a Running made for it."""
    assert reconcile(desired, {s.name: s for s in running}) == reconcile(desired, running_of(running))


def test_restart_and_update_carry_the_new_spec():
    plan = reconcile([A_ARGV, spec("b", policy=Policy(restart="never"))],
                     {"a": Running(A.process_hash, A.policy_hash), "b": Running(B.process_hash, B.policy_hash)})
    assert plan.restart == (A_ARGV,)
    assert plan.update[0].policy.restart == "never"


def test_reconcile_accepts_a_generator():
    plan = reconcile((s for s in [A, B]), running_of([B]))
    assert names(plan)["start"] == ["a"] and names(plan)["keep"] == ["b"]


# --- through real config files ---------------------------------------------------------------

CONSUMERS = """
[workers.consumer]
command = "consume --ip {{{{ ip }}}} --queue {{{{ q }}}}"
matrix = {{ ip = ["10.0.0.1", "10.0.0.2"], q = ["q1", "q2"] }}
env = {{ HOST = "{env}" }}
replicas = {replicas}
stop_timeout = "{stop}"
"""


def load(tmp_path: Path, text: str, filename: str):
    path = tmp_path / filename
    path.write_text(textwrap.dedent(text))
    return expand(load_config(path))


def consumers(tmp_path, filename, env="{{ ip }}", replicas=2, stop="5s"):
    return load(tmp_path, CONSUMERS.format(env=env, replicas=replicas, stop=stop), filename)


def test_reload_without_change_keeps_everything(tmp_path):
    old = consumers(tmp_path, "a.toml")
    plan = reconcile(consumers(tmp_path, "b.toml"), running_of(old))
    assert plan.empty
    assert len(plan.keep) == 8


def test_replicas_2_to_3_starts_exactly_one_per_combo(tmp_path):
    old = consumers(tmp_path, "a.toml", replicas=2)
    plan = reconcile(consumers(tmp_path, "b.toml", replicas=3), running_of(old))
    assert [s.name for s in plan.start] == [f"consumer-{ip}-{q}-2" for ip in ("10.0.0.1", "10.0.0.2")
                                            for q in ("q1", "q2")]
    assert plan.counts() == {"start": 4, "stop": 0, "restart": 0, "update": 0, "keep": 8}


def test_replicas_3_to_2_stops_the_last(tmp_path):
    old = consumers(tmp_path, "a.toml", replicas=3)
    plan = reconcile(consumers(tmp_path, "b.toml", replicas=2), running_of(old))
    assert all(name.endswith("-2") for name in plan.stop) and len(plan.stop) == 4
    assert plan.counts()["keep"] == 8


def test_replicas_2_to_3_without_matrix_starts_one(tmp_path):
    text = '[workers.w]\ncommand = "run"\nreplicas = {n}\n'
    old = load(tmp_path, text.format(n=2), "a.toml")
    plan = reconcile(load(tmp_path, text.format(n=3), "b.toml"), running_of(old))
    assert names(plan) == {"start": ["w-2"], "stop": [], "restart": [], "update": [], "keep": ["w", "w-1"]}


def test_env_change_for_one_ip_restarts_only_its_instances(tmp_path):
    old = consumers(tmp_path, "a.toml")
    new = consumers(tmp_path, "b.toml", env="{{ 'moved' if ip == '10.0.0.2' else ip }}")
    plan = reconcile(new, running_of(old))
    assert sorted(s.name for s in plan.restart) == sorted(
        f"consumer-10.0.0.2-{q}{r}" for q in ("q1", "q2") for r in ("", "-1"))
    assert all(name.startswith("consumer-10.0.0.1-") for name in plan.keep) and len(plan.keep) == 4
    assert not (plan.start or plan.stop or plan.update)
    lines = describe(plan, {s.name: s for s in old})
    assert lines[0] == "~ consumer-10.0.0.2-q1 (env)"
    assert len(lines) == 4


def test_policy_only_change_updates_without_restart(tmp_path):
    old = consumers(tmp_path, "a.toml", stop="5s")
    plan = reconcile(consumers(tmp_path, "b.toml", stop="7s"), running_of(old))
    assert plan.counts() == {"start": 0, "stop": 0, "restart": 0, "update": 8, "keep": 0}
    assert all(s.policy.stop_timeout == 7.0 for s in plan.update)
    assert describe(plan, {s.name: s for s in old})[0] == "= consumer-10.0.0.1-q1 (stop_timeout)"


def test_renamed_template_stops_old_names_and_starts_new(tmp_path):
    old = consumers(tmp_path, "a.toml")
    renamed = CONSUMERS.format(env="{{ ip }}", replicas=2, stop="5s").replace("[workers.consumer]",
                                                                               "[workers.reader]")
    plan = reconcile(load(tmp_path, renamed, "b.toml"), running_of(old))
    assert sorted(plan.stop) == sorted(s.name for s in old)
    assert [s.name for s in plan.start] == [s.name.replace("consumer", "reader", 1) for s in old]
    assert not (plan.restart or plan.update or plan.keep)


# --- describe -----------------------------------------------------------------------------------

def test_describe_lines_with_changed_fields():
    old = {s.name: s for s in (A, B, spec("gone"), spec("e"))}
    desired = [A_BOTH, spec("b", env=(("X", "1"),), cwd="/x"), spec("new"),
               spec("e", policy=Policy(restart="never", min_uptime=1.0))]
    plan = reconcile(desired, running_of(old.values()))
    assert describe(plan, old) == [
        "+ new",
        "- gone",
        "~ a (argv, stop_timeout)",
        "~ b (env, cwd)",
        "= e (restart, min_uptime)",
    ]


def test_describe_without_old_spec_has_no_field_list():
    plan = Plan(restart=(A_ARGV,), update=(A_POLICY,))
    assert describe(plan, {}) == ["~ a", "= a"]


def test_describe_empty_plan():
    assert describe(reconcile([A], running_of([A])), {"a": A}) == []


def test_spec_hash_ignores_name_and_params():
    other = dataclasses.replace(A, name="zzz", params=(("ip", "1"),), replica=3).with_hashes()
    assert (other.process_hash, other.policy_hash) == (A.process_hash, A.policy_hash)
