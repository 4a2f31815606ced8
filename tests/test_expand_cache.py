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


MATRIX = """
[workers.m]
name = "m{{{{ t }}}}-{{{{ replica }}}}"
command = ["sleep", "{{{{ t }}}}"]
matrix = {{ t = [{cells}] }}
replicas = {replicas}
"""


def _matrix(tmp_path, cells: str, replicas: int = 1):
    path = tmp_path / "workers.toml"
    path.write_text(textwrap.dedent(MATRIX.format(cells=cells, replicas=replicas)))
    return load_config(path)


def _rendering(monkeypatch) -> list[str]:
    """The names rendered from now on (the name pattern renders once per cell and replica)."""
    from orchestrator.expand.renderer import Renderer
    names: list[str] = []
    original = Renderer.text
    monkeypatch.setattr(Renderer, "text", lambda self, source, context: (
        names.append(f"{context['t']}/{context['replica']}") if source.startswith("m") else None)
        or original(self, source, context))
    return names


def test_a_matrix_edit_renders_only_the_cells_it_adds(tmp_path, monkeypatch):
    cache = ExpansionCache()
    expand(_matrix(tmp_path, "101, 102, 103", replicas=2), cache)
    rendered = _rendering(monkeypatch)
    config = _matrix(tmp_path, "101, 109, 103", replicas=2)
    specs = expand(config, cache)
    assert sorted(rendered) == ["109/0", "109/1"], rendered
    assert specs == expand(config), "reusing cells must give what a fresh expansion gives"
    assert [s.name for s in specs] == ["m101-0", "m101-1", "m109-0", "m109-1", "m103-0", "m103-1"]
    rendered.clear()
    grown = _matrix(tmp_path, "101, 109, 103", replicas=3)  # replicas shape every cell: all again
    assert expand(grown, cache) == expand(grown)
    assert len([r for r in rendered if r.endswith("/0")]) >= 3, rendered


def test_a_cell_whose_value_changes_type_is_rendered_again(tmp_path, monkeypatch):
    cache = ExpansionCache()
    expand(_matrix(tmp_path, "1, 2"), cache)
    rendered = _rendering(monkeypatch)
    config = _matrix(tmp_path, "true, 2")  # true == 1 in Python, but renders "true"
    specs = expand(config, cache)
    assert rendered == ["True/0"], rendered
    assert specs == expand(config) and specs[0].argv == ("sleep", "true")


def test_a_changed_command_renders_every_cell_again(tmp_path, monkeypatch):
    cache = ExpansionCache()
    expand(_matrix(tmp_path, "101, 102"), cache)
    path = tmp_path / "workers.toml"
    path.write_text(path.read_text().replace('"sleep"', '"/bin/sleep"'))
    rendered = _rendering(monkeypatch)
    config = load_config(path)
    specs = expand(config, cache)
    assert sorted(rendered) == ["101/0", "102/0"], rendered
    assert [s.argv[0] for s in specs] == ["/bin/sleep", "/bin/sleep"]


def test_a_master_applies_a_one_cell_matrix_edit_to_that_instance_alone(start_master):
    from conftest import orch, wait_for
    import psutil
    # watch = false: the save is applied by orch reload alone, whose answer the test reads
    text = '[orchestrator]\nwatch = false\n[workers.s]\nname = "s{{ t % 10 }}"\ncommand = ["sleep", "{{ t }}"]\nmatrix = { t = [1001, 1002, 1003] }\n'
    master = start_master(text)
    before = master.wait_running(3)
    master.write(text.replace("1002", "2002"))
    result = orch("reload", "-c", str(master.config), timeout=20)
    assert result.returncode == 0 and "1 restarted" in result.stdout and "2 unchanged" in result.stdout, result
    after = master.wait_running(3)
    assert {n for n in before if after[n] != before[n]} == {"s2"}
    wait_for(lambda: psutil.Process(after["s2"]).cmdline() == ["sleep", "2002"], 5, message="the new command")
