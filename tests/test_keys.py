"""The key table (orchestrator/config/keys.py) is the one declaration of every workers.toml
key: the dataclasses, the validator's key lists, the spec's identity and the master's live
settings must all agree with it."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from orchestrator.config import keys
from orchestrator.config.keys import KEYS, Kind
from orchestrator.config.load import Policy, Settings, Template, load_config
from orchestrator.expand.render import expand
from orchestrator.expand.spec import ProcessSpec
from orchestrator.supervise.reloader import LIVE_SETTINGS


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING


def test_policy_fields_and_defaults_are_the_policy_keys():
    table = {k.attr: k for k in keys.POLICY_KEYS + keys.POLICY_SUB_KEYS}
    fields = _fields(Policy)
    assert set(fields) == set(table)
    for name, key in table.items():
        expected = keys.BY_PATH[key.default_from].value if key.default_from else key.value
        assert _default(fields[name]) == expected, name


def test_settings_fields_and_defaults_are_the_orchestrator_keys():
    table = {k.attr: k for k in keys.SETTINGS_KEYS}
    fields = _fields(Settings)
    assert set(fields) == set(table)
    for name, field in fields.items():
        if _default(field) is not dataclasses.MISSING:  # paths and name are resolved at load
            assert field.default == table[name].value, name


def test_template_fields_are_the_other_worker_keys():
    expected = {k.attr for k in keys.TEMPLATE_KEYS} | {"name", "policy", "source"}
    assert set(_fields(Template)) == expected


def test_every_key_has_a_kind_doc_example_and_a_default_its_parser_accepts():
    assert len({k.path for k in KEYS}) == len(KEYS)
    for key in KEYS:
        assert key.doc and key.example and isinstance(key.kind, Kind), key.path
        if key.default is not None:
            key.type.parse(key.default)  # raises if the declared default is not valid TOML input


def test_process_keys_and_only_they_feed_the_spec_identity():
    for key in KEYS:
        assert bool(key.spec) == (key.kind is Kind.PROCESS), key.path
    spec_fields = _fields(ProcessSpec)
    assert set(keys.IDENTITY_FIELDS) <= set(spec_fields)
    assert "policy" not in keys.IDENTITY_FIELDS and "name" not in keys.IDENTITY_FIELDS


def test_live_settings_are_derived_and_include_the_new_keys():
    assert set(LIVE_SETTINGS) == {k.name for k in keys.SETTINGS_KEYS if k.kind is Kind.LIVE}
    assert {"graceful_timeout", "check_interval", "log_level", "log_max_size", "log_backups",
            "watch", "include", "settle",  # and, since issue 30, what rebinds or moves:
            "name", "control_socket", "pidfile", "log_dir", "max_instances", "metrics"} <= set(LIVE_SETTINGS)
    assert all(k.kind in (Kind.LIVE, Kind.RESTART) for k in keys.SETTINGS_KEYS)
    assert all(k.kind not in (Kind.LIVE, Kind.RESTART) for k in KEYS if k.section == "workers")


def _load(tmp_path: Path, text: str):
    path = tmp_path / "workers.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_unset_keys_load_as_the_table_defaults(tmp_path):
    config = _load(tmp_path, """
        [orchestrator]
        log_backups = 2
        [workers.a]
        command = "sleep 1"
        """)
    policy, template, settings = config.templates[0].policy, config.templates[0], config.settings
    for key in keys.POLICY_KEYS + keys.POLICY_SUB_KEYS:
        expected = getattr(settings, key.default_from.split(".")[1]) if key.default_from else key.value
        assert getattr(policy, key.attr) == expected, key.path
    assert policy.log_backups == 2 and policy.kill_mode == "group" and settings.settle == 2.0
    for key in keys.TEMPLATE_KEYS:
        if key.default is not None:
            value = key.value
            expected = tuple(value.items()) if isinstance(value, dict) else \
                tuple(value) if isinstance(value, list) else value
            assert getattr(template, key.attr) == expected, key.path


@pytest.mark.parametrize("text, field, value", [
    ('kill_mode = "mixed"', "kill_mode", "mixed"),
    ('stop_signal = "sigint"', "stop_signal", 2),
    ('memory = { hard = "1KiB" }', "memory_hard", 1024),
    ('backoff = { max = "2m" }', "backoff_max", 120.0),
])
def test_defaults_merge_per_key_and_a_template_overrides(tmp_path, text, field, value):
    config = _load(tmp_path, f"""
        [defaults]
        {text}
        [workers.a]
        command = "sleep 1"
        [workers.b]
        command = "sleep 1"
        backoff = {{ initial = "3s" }}
        """)
    a, b = (t.policy for t in config.templates)
    assert getattr(a, field) == value and getattr(b, field) == value
    assert b.backoff_initial == 3.0


def test_kill_mode_is_validated_and_a_policy_change(tmp_path):
    from orchestrator.errors import ConfigError
    with pytest.raises(ConfigError, match="workers.a.kill_mode.*expected one of group, mixed"):
        _load(tmp_path, '[workers.a]\ncommand = "x"\nkill_mode = "process"\n')
    old = expand(_load(tmp_path, '[workers.a]\ncommand = "sleep 1"\n'))[0]
    new = expand(_load(tmp_path, '[workers.a]\ncommand = "sleep 1"\nkill_mode = "mixed"\n'))[0]
    assert old.process_hash == new.process_hash and old.policy_hash != new.policy_hash


def test_every_example_is_valid_toml_its_parser_accepts():
    import tomllib
    for key in KEYS:
        value = tomllib.loads(f"x = {key.example}")["x"]
        key.type.parse(value)
