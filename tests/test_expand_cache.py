"""Reload work follows the edit: unchanged templates reuse their specs (and stay identical)."""

from __future__ import annotations

import textwrap

from jinja2.sandbox import SandboxedEnvironment

from orchestrator.config.load import load_config
from orchestrator.expand.render import ExpansionCache, expand

BASE = """
[vars]
v = "{v}"
[workers.a]
command = "sleep 1{{{{ n }}}}"
matrix = {{ n = [1, 2, 3] }}
[workers.b]
command = "sleep {b}{{{{ n }}}}"
matrix = {{ n = [1, 2, 3] }}
env = {{ V = "{{{{ v }}}}" }}
"""


def load(tmp_path, **values):
    path = tmp_path / "workers.toml"
    path.write_text(textwrap.dedent(BASE.format(**values)))
    return load_config(path)


def test_cached_expansion_equals_a_fresh_one_and_renders_only_the_changed_template(tmp_path, monkeypatch):
    cache = ExpansionCache()
    expand(load(tmp_path, v="x", b=2), cache)
    renders = []
    original = SandboxedEnvironment.from_string
    monkeypatch.setattr(SandboxedEnvironment, "from_string",
                        lambda self, source, *a, **k: renders.append(str(source)) or original(self, source, *a, **k))
    config = load(tmp_path, v="x", b=3)
    cached = expand(config, cache)
    rendered = list(renders)
    assert cached == expand(config)
    assert any("sleep 3" in r for r in rendered), "template b changed and is rendered again"
    assert not any("sleep 1" in r for r in rendered), "template a is unchanged and must not be rendered again"
    renders.clear()
    changed_vars = load(tmp_path, v="y", b=3)
    assert expand(changed_vars, cache) == expand(changed_vars)
    assert any("sleep 1" in r for r in renders), "a [vars] change re-renders every template"


def test_seeded_cache_matches(tmp_path):
    config = load(tmp_path, v="x", b=2)
    specs = expand(config)
    cache = ExpansionCache()
    cache.seed(config, specs)
    assert cache.usable(config)
    assert cache.get(config.templates[0]) == [s for s in specs if s.template == "a"]
    assert expand(config, cache) == specs


def test_a_template_cache_parses_only_changed_tables_and_stays_type_exact(tmp_path):
    from orchestrator.config.load import TemplateCache
    from orchestrator.errors import ConfigError
    import pytest
    cache = TemplateCache()
    first = load_config(_write(tmp_path, b="sleep 2", replicas="1"), cache)
    second = load_config(_write(tmp_path, b="sleep 3", replicas="1"), cache)
    a1, b1 = first.templates
    a2, b2 = second.templates
    assert a2 is a1, "an unchanged table was parsed again"
    assert b2 is not b1 and b2.command == "sleep 3" and b2 == load_config(tmp_path / "workers.toml").templates[1]
    # True == 1 in Python: a cache comparing tables with == would keep the old template
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, b="sleep 3", replicas="true"), cache)
    assert "workers.a.replicas" in str(caught.value)
    # a changed [orchestrator] setting (a policy default comes from it) parses everything again
    third = load_config(_write(tmp_path, b="sleep 3", replicas="1", stop='log_backups = 7'), cache)
    assert third.templates[0] is not a2 and third.templates[0].policy.log_backups == 7


def _write(tmp_path, b: str, replicas: str, stop: str = ""):
    path = tmp_path / "workers.toml"
    path.write_text(f'[orchestrator]\n{stop}\n[workers.a]\ncommand = "sleep 1"\nreplicas = {replicas}\n'
                    f'[workers.b]\ncommand = "{b}"\n')
    return path
