"""The piecewise TOML parser (config/pieces.py) always answers what the whole-file parser does.

Random documents mix every construct that could make cutting at `[` lines wrong: arrays of
tables, tables defined twice, headers reaching into dotted-key and inline tables, super-tables
defined after their children, multi-line arrays and strings with lines that start with `[`.
Each sequence of documents goes through one parser, as a master's reloads do."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import examples

from orchestrator.config.pieces import TomlPieces, tomllib

ROOT = Path(__file__).resolve().parent.parent


def whole(text: str):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "error"


def pieced(parser: TomlPieces, text: str):
    try:
        return parser.loads(text)
    except tomllib.TOMLDecodeError:
        return "error"


def same(a, b) -> bool:
    """Equal, and type-exact (True == 1 must not pass), key order included."""
    return repr(a) == repr(b)


KEYS = st.sampled_from(["a", "b", "c", "workers", "x", '"q.k"', "'lit'"])
HEADERS = st.lists(KEYS, min_size=1, max_size=3).map(".".join)
VALUES = st.sampled_from(["1", "true", '"s"', "[1, 2]", "{ y = 1 }", "{ c = { d = 2 } }", "1.0",
                          "[\n[1],\n[2],\n]", '"""\n[a]\nz = 1\n"""', "'''\n[[b]]\n'''", "[\n  1,\n]"])
LINES = st.one_of(
    HEADERS.map(lambda h: f"[{h}]"),
    HEADERS.map(lambda h: f"[[{h}]]"),
    HEADERS.map(lambda h: f"  [ {h} ]  # a comment"),
    st.tuples(st.lists(KEYS, min_size=1, max_size=2).map(".".join), VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.just("# [not.a.header]"),
    st.just(""),
    st.just("[broken"),
)
DOCS = st.lists(LINES, max_size=14).map("\n".join)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(DOCS, min_size=1, max_size=4))
def test_random_documents_parse_as_the_whole_file_does(docs):
    parser = TomlPieces()
    for text in docs:
        assert same(pieced(parser, text), whole(text)), text


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCS, st.data())
def test_edits_of_a_valid_document_parse_as_the_whole_file_does(text, data):
    """A document, then edits of it (a line changed, removed or added) through one parser."""
    parser = TomlPieces()
    pieced(parser, text)
    lines = text.split("\n")
    for _ in range(3):
        at = data.draw(st.integers(0, len(lines)))
        line = data.draw(LINES)
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "insert" or at == len(lines):
            lines.insert(at, line)
        elif kind == "set":
            lines[at] = line
        else:
            del lines[at]
        edited = "\n".join(lines)
        assert same(pieced(parser, edited), whole(edited)), edited


def test_the_shipped_configs_parse_the_same():
    files = sorted(ROOT.glob("configs/*.toml")) + [ROOT / "pyproject.toml"]
    assert files, "no shipped config found"
    for file in files:
        text = file.read_text()
        parser = TomlPieces()
        assert same(parser.loads(text), tomllib.loads(text)), file
        assert same(parser.loads(text), tomllib.loads(text)), file


def fleet(n: int, changed: int | None = None) -> str:
    head = '[orchestrator]\nname = "t"\n\n[defaults]\nrestart = "always"\n'
    return head + "".join(f'\n[workers.w{i}]\ncommand = ["sleep", "{i + (1000 if i == changed else 0)}"]\n'
                          for i in range(n))


def test_an_edit_parses_only_its_table_and_keeps_the_others_identical():
    parser = TomlPieces()
    first = parser.loads(fleet(50))
    second = parser.loads(fleet(50, changed=7))
    assert same(second, tomllib.loads(fleet(50, changed=7)))
    kept = [i for i in range(50) if second["workers"][f"w{i}"] is first["workers"][f"w{i}"]]
    assert kept == [i for i in range(50) if i != 7]
    assert second["workers"]["w7"]["command"] == ["sleep", "1007"]
    assert not parser.whole


def test_loading_twice_through_one_cache_changes_no_shared_table(tmp_path):
    """The parser's tables are shared with the next load: loading must never change them. An
    included file adds its [vars] to the main file's; done in place, the second load would
    find them already defined."""
    from orchestrator.config.load import TemplateCache, load_config

    main = tmp_path / "workers.toml"
    main.write_text('[orchestrator]\ninclude = ["conf.d/*.toml"]\n[vars]\nhost = "a"\n'
                    '[workers.x]\ncommand = ["echo", "{{ host }}", "{{ port }}"]\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "more.toml").write_text('[vars]\nport = 1\n[workers.y]\ncommand = ["true"]\n')
    cache = TemplateCache()
    first = load_config(main, cache)
    second = load_config(main, cache)
    assert dict(first.vars) == dict(second.vars) == {"host": "a", "port": 1}
    assert [t.name for t in second.templates] == ["x", "y"]
    assert second.templates[0] is first.templates[0]  # unchanged text: the template is reused


def test_a_multiline_array_with_lines_starting_with_a_bracket_is_parsed_whole_from_then_on():
    parser = TomlPieces()
    text = 'matrix = [\n["a", 1],\n["b", 2],\n]\n[workers.x]\ncommand = ["true"]\n'
    assert same(parser.loads(text), tomllib.loads(text))
    assert parser.whole


@pytest.mark.parametrize("text", [
    "[a]\nx = 1\n[a]\ny = 2\n",              # a table defined twice
    "[a.b]\nx = 1\n[a]\nb = 2\n",            # a key that is already a table
    "a = { b = 1 }\n[a.c]\nx = 1\n",         # a header inside an inline table
    "[a]\nb.c = 1\n[a.b]\nx = 1\n",          # a dotted-key table defined again
    "x = 1\n[a]\ny = \n",                    # broken
])
def test_what_the_whole_file_parser_refuses_is_refused(text):
    parser = TomlPieces()
    with pytest.raises(tomllib.TOMLDecodeError) as caught:
        parser.loads(text)
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(text)
    assert str(caught.value) == str(expected.value)  # the same located message
    assert not parser.whole
