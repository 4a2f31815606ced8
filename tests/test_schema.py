"""`orch schema`: the JSON Schema generated from the key table accepts every shipped config,
rejects the bad-config corpus wherever a schema can express the rule, and its value patterns
agree with the parsers on samples."""

from __future__ import annotations

import json
import tomllib

import jsonschema
import pytest
from conftest import ROOT, orch
from test_config_errors import CASES

from orchestrator.config import fields
from orchestrator.config.keys import KEYS
from orchestrator.config.schema import json_schema

VALIDATOR = jsonschema.Draft202012Validator(json_schema())

# Rules only `orch check` can apply: rendering, cross-key values, counts after expansion.
BEYOND_A_SCHEMA = {
    "toml-syntax", "memory-soft-above-hard", "matrix-expression-not-list", "undefined-in-command",
    "undefined-in-name", "undefined-in-env", "duplicate-names", "max-instances",
    "unbalanced-quotes", "unbalanced-quotes-templated", "backoff-initial-above-max",
    "name-with-spaces", "sandbox-command", "sandbox-shell-command", "sandbox-name", "sandbox-env",
}


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_orch_schema_prints_it():
    result = orch("schema", timeout=20)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json_schema()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    errors = list(VALIDATOR.iter_errors(tomllib.loads(path.read_text())))
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_the_bad_config_corpus_is_rejected_where_a_schema_can_say_so(case):
    text, keypath = case.values[0], case.values[1]
    case_id = case.id
    if case_id == "toml-syntax":
        return  # not TOML at all: no document for a schema to look at
    errors = list(VALIDATOR.iter_errors(tomllib.loads(text)))
    if case_id in BEYOND_A_SCHEMA:
        assert not errors, f"{case_id}: the schema now rejects it, move it out of BEYOND_A_SCHEMA"
    else:
        assert errors, f"{case_id}: the schema accepts a config orch rejects"
        paths = [".".join(str(p) for p in e.absolute_path) for e in errors]
        top = keypath.split(".")[0]
        assert any(p.startswith(top) or keypath.startswith(p) for p in paths), (case_id, paths)


SAMPLES = [  # (type, value): the parser and the schema must agree on each
    (fields.DURATION, "10s"), (fields.DURATION, " 1.5 m "), (fields.DURATION, 0), (fields.DURATION, -1),
    (fields.DURATION, "10 parsecs"), (fields.DURATION, "5"), (fields.DURATION, True), (fields.DURATION, "1.s"),
    (fields.POSITIVE_DURATION, "0s"), (fields.POSITIVE_DURATION, "0.0"), (fields.POSITIVE_DURATION, 0),
    (fields.POSITIVE_DURATION, "0.5s"), (fields.POSITIVE_DURATION, "10ms"), (fields.POSITIVE_DURATION, 0.1),
    (fields.POSITIVE_DURATION, "00"), (fields.POSITIVE_DURATION, "100"),
    (fields.SIZE, "200MiB"), (fields.SIZE, "1gb"), (fields.SIZE, "12 b"), (fields.SIZE, 3),
    (fields.SIZE, -3), (fields.SIZE, "lots"), (fields.SIZE, "1.5KiB"), (fields.SIZE, 1.5),
    (fields.SIGNAL, "TERM"), (fields.SIGNAL, "sigint"), (fields.SIGNAL, " Hup "), (fields.SIGNAL, 9),
    (fields.SIGNAL, "SIGFOO"), (fields.SIGNAL, 0), (fields.SIGNAL, 99), (fields.SIGNAL, "SIGSIGTERM"),
    (fields.ADDRESS, "127.0.0.1:9108"), (fields.ADDRESS, "[::1]:1"), (fields.ADDRESS, "localhost"),
    (fields.ADDRESS, "h:0"), (fields.ADDRESS, "h:65535"), (fields.ADDRESS, "h:65536"), (fields.ADDRESS, ":80"),
    (fields.COMMAND, "x"), (fields.COMMAND, "  "), (fields.COMMAND, []), (fields.COMMAND, ["a", 1]),
    (fields.int_at_least(1), 0), (fields.int_at_least(1), 1), (fields.int_at_least(1), True),
    (fields.BOOL, "yes"), (fields.STRINGS, ["a"]), (fields.STRINGS, "a"), (fields.TABLES, [{}]),
]


@pytest.mark.parametrize("value_type, value", SAMPLES, ids=lambda v: repr(v)[:30])
def test_each_value_types_schema_agrees_with_its_parser(value_type, value):
    try:
        value_type.parse(value)
        parsed = True
    except ValueError:
        parsed = False
    valid = jsonschema.Draft202012Validator(value_type.schema).is_valid(value)
    assert parsed == valid, f"{value_type.name}: parser says {parsed}, schema says {valid}"


def test_every_key_is_in_the_schema_with_its_doc():
    schema = json_schema()
    for key in KEYS:
        parts = key.path.split(".")
        node = {"workers": schema["$defs"]["template"],
                "sockets": schema["properties"]["sockets"]["additionalProperties"],
                "hooks": schema["properties"]["hooks"]["items"]}.get(
                    parts[0], schema["properties"]["orchestrator"])
        for part in parts[2:] if parts[0] in ("workers", "sockets", "hooks") else parts[1:]:
            node = node["properties"][part]
        assert key.doc in node["description"], key.path


def _toml_blocks(text: str) -> list[str]:
    import re
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_the_readmes_config_examples_are_valid():
    blocks = _toml_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3
    for block in blocks:
        document = tomllib.loads(block)
        if document and not set(document) & {"orchestrator", "vars", "defaults", "workers", "hooks"}:
            document = {"workers": {"w": {"command": "x", **document}}}  # keys of one template
        errors = list(VALIDATOR.iter_errors(document))
        assert not errors, (block[:200], [e.message for e in errors])
