"""Templates giving their policy keys the same values share one Policy, made once
(config/load.py); what differs, and every problem, stays per template."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.config.load import ConfigError, _make_policy, load_config
from orchestrator.config.locate import Problems


def load(tmp_path, text):
    path = tmp_path / "workers.toml"
    path.write_text(textwrap.dedent(text))
    return {t.name: t for t in load_config(path).templates}


def test_templates_under_one_defaults_table_share_one_policy_equal_to_their_own(tmp_path):
    templates = load(tmp_path, """
        [defaults]
        restart = "always"
        backoff = { initial = "1s", max = "60s" }
        [workers.a]
        command = ["sleep", "1"]
        [workers.b]
        command = ["sleep", "2"]
        [workers.c]
        command = ["sleep", "3"]
        stop_timeout = "7s"
    """)
    a, b, c = templates["a"].policy, templates["b"].policy, templates["c"].policy
    assert a is b, "the same policy keys and values: one Policy"
    assert c is not a and c.stop_timeout == 7.0 and a.stop_timeout != 7.0
    assert (a.restart, a.backoff_initial, a.backoff_max) == ("always", 1.0, 60.0)


def test_a_shared_policy_is_the_one_each_template_would_get_alone(tmp_path):
    templates = load(tmp_path, """
        [orchestrator]
        log_max_size = "3MiB"
        [workers.a]
        command = ["sleep", "1"]
        memory = { soft = "100MiB", hard = "200MiB" }
        [workers.b]
        command = ["sleep", "1"]
        memory = { soft = "100MiB", hard = "200MiB" }
    """)
    path = tmp_path / "workers.toml"
    config = load_config(path)
    clean = {"command": ("sleep", "1"), "memory": {"soft": "100MiB", "hard": "200MiB"}}
    problems = Problems(path, path.read_text())
    alone = _make_policy(clean, "workers.a.", config.settings, problems)
    assert not problems.items
    assert templates["a"].policy is templates["b"].policy
    assert templates["a"].policy == alone and alone.log_max_size == 3 * 2**20


def test_settings_the_policy_defaults_to_are_part_of_what_is_shared(tmp_path):
    first = load(tmp_path, """
        [orchestrator]
        log_backups = 2
        [workers.a]
        command = ["sleep", "1"]
    """)["a"].policy
    second = load(tmp_path, """
        [orchestrator]
        log_backups = 7
        [workers.a]
        command = ["sleep", "1"]
    """)["a"].policy
    assert (first.log_backups, second.log_backups) == (2, 7)


@pytest.mark.parametrize("memory", ['{ soft = "300MiB", hard = "200MiB" }', '{ sfot = "1MiB" }'])
def test_every_template_with_a_bad_policy_reports_it_not_only_the_first(tmp_path, memory):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"""
            [workers.a]
            command = ["sleep", "1"]
            memory = {memory}
            [workers.b]
            command = ["sleep", "1"]
            memory = {memory}
        """)
    keys = [p.keypath for p in caught.value.problems]
    assert any(k.startswith("workers.a.memory") for k in keys) and any(k.startswith("workers.b.memory") for k in keys), keys
