"""Plain substitutions render without Jinja (expand/simple.py), and always as Jinja would."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, examples
from orchestrator.expand.renderer import Renderer
from orchestrator.expand.simple import substitute

CONTEXT = {"t": "abcdefgh", "n": 5, "b": True, "f": 1.5, "z": None, "l": ["x", "y"], "true": "shadow",
           "self": "me", "e": ""}


def jinja(source: str, context: dict) -> str:
    """What the renderer's own Jinja environment makes of `source` (bypassing simple.py)."""
    renderer = Renderer()
    return renderer._compiled(renderer.plain, source).render(context)


@pytest.mark.parametrize("source, expected", [
    ("s{{ t[-5:] }}", "sdefgh"),
    ("{{t}}", "abcdefgh"),
    ("{{ n }}-x", "5-x"),
    ("{{ t[0] }}{{ t[-1] }}", "ah"),
    ("{{ t[1:3] }}{{ t[:] }}{{ t[5:] }}{{ t[:-6] }}", "bcabcdefghfghab"),
    ("a}}b{{ t }}", "a}}babcdefgh"),
    ("{{ e }}", ""),
])
def test_plain_substitutions_render_without_jinja_and_as_jinja_does(source, expected):
    assert substitute(source, CONTEXT) == expected == jinja(source, CONTEXT)


@pytest.mark.parametrize("source", [
    "{{ t[9] }}", "{{ b }}", "{{ f }}", "{{ z }}", "{{ l }}", "{{ missing }}", "{{ t[] }}", "{{ t[1 2] }}",
    "{{ n[0] }}", "{{ t }}\n", "{% if t %}x{% endif %}", "{# c #}{{ t }}", "{{- t }}", "{{ t | upper }}",
    "{{ true }}", "{{ self }}", "{{ t ~ t }}", "{{ {{ t }}", "{{ t }} {{",
])
def test_anything_else_is_left_to_jinja(source):
    assert substitute(source, CONTEXT) is None


PIECES = st.sampled_from(["{{ t }}", "{{t}}", "{{ n }}", "{{ t[-5:] }}", "{{ t[2] }}", "{{ t[ 1 : 4 ] }}",
                          "{{ t[9] }}", "{{ b }}", "{{ true }}", "{{ e }}", "{{ t[] }}", "{{ l }}", "x", "-",
                          "}}", "{", "}", "[", ":", " ", "\n", "{{", "{%", "%}", "0", "t"])


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(PIECES, max_size=8))
def test_whatever_the_fast_path_renders_jinja_renders_the_same(pieces):
    source = "".join(pieces)
    fast = substitute(source, CONTEXT)
    if fast is not None:
        assert fast == jinja(source, CONTEXT)


def test_a_matrix_of_plain_substitutions_expands_without_importing_jinja(tmp_path):
    """The bench's matrix fleet: name and command from the cell's value, and Jinja not loaded."""
    (tmp_path / "workers.toml").write_text(textwrap.dedent("""
        [workers.s]
        name = "s{{ t[-3:] }}"
        command = ["/bin/sleep", "{{ t }}"]
        matrix = { t = ["1000001", "1000002", "1000003"] }
    """))
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from pathlib import Path
        from orchestrator.config.load import load_config
        from orchestrator.expand.render import expand
        specs = expand(load_config(Path(sys.argv[2])))
        print([(s.name, s.argv) for s in specs], "jinja2" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path / "workers.toml")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("[('s001', ('/bin/sleep', '1000001')), ('s002', ('/bin/sleep', '1000002')), "
                   "('s003', ('/bin/sleep', '1000003'))] False")
