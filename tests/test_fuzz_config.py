"""Random mutations of the shipped configs: `orch check` exits 0 or 2 and never prints a
traceback, and a running master fed a file that does not validate never changes its fleet."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import examples, orch
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {p.name: p.read_text() for p in sorted((ROOT / "configs").glob("*.toml"))}
assert SHIPPED, "no configs/*.toml to mutate"


# --- a small TOML writer, so mutations can be made on the data, not only on the text ----------

pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def _string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


class Raw(str):
    """TOML text written as is (deep nesting: a recursive writer would hit Python's limit)."""


def _value(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_string(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def dump(data: dict) -> str:
    """Top-level scalars first, then one [section] per table (nested tables inline)."""
    lines = [f"{_string(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if not isinstance(table, dict):
            continue
        subtables = {k: v for k, v in table.items() if isinstance(v, dict) and key == "workers"}
        lines.append(f"[{_string(key)}]")
        lines += [f"{_string(k)} = {_value(v)}" for k, v in table.items() if k not in subtables]
        for name, sub in subtables.items():
            lines.append(f"[{_string(key)}.{_string(name)}]")
            lines += [f"{_string(k)} = {_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


# --- mutations ---------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.text(max_size=20), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True),
    st.booleans(), st.sampled_from([0, -1, 10**18, "0s", "-5s", "10x", "", "{{ nope }}", "{{",
                                    "10000000000d", "999999999999TiB", "KILL", "SIGNOPE", ":0",
                                    "{{ queues }}", "{{ range(10**9) }}"]),
    st.builds(lambda n: "x" * n, st.sampled_from([10_000, 100_000, 1_000_000])),  # huge strings
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (and list index) in the data."""
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _parent(data: Any, path: tuple) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def _deep(depth: int, leaf: Any) -> Raw:
    return Raw("[" * depth + _value(leaf) + "]" * depth)


@st.composite
def data_mutation(draw, data: dict) -> dict:
    paths = _paths(data)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        action = draw(st.sampled_from(["delete", "replace", "deep", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "deep":
            parent[path[-1]] = _deep(draw(st.integers(50, 3000)), draw(SCALARS))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
    return data


@st.composite
def mutated(draw) -> str:
    """A shipped config, mutated on its data or on its text (bytes, cuts, repeats)."""
    text = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    if draw(st.booleans()):
        return dump(draw(data_mutation(tomllib.loads(text))))
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.sampled_from(["bytes", "cut", "repeat", "drop"]))
        if action == "bytes":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "cut":
            del raw[at:]
        elif action == "repeat":
            raw[at:at] = raw[max(0, at - 200):at]
        else:
            del raw[at:at + draw(st.integers(1, 40))]
    return raw.decode("utf-8", errors="surrogateescape")


def write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))


def check_in_process(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", "-c", str(path)])
    return code, out.getvalue() + err.getvalue()


# --- the properties ---------------------------------------------------------------------------

@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(text=mutated())
def test_check_exits_0_or_2_on_any_mutation(tmp_path, text):
    path = tmp_path / "workers.toml"
    write(path, text)
    code, output = check_in_process(path)
    event(f"exit {code}")
    assert code in (0, 2), output
    assert "Traceback" not in output
    if code == 2:
        assert output.startswith("orch: config error: "), output
        assert output.splitlines()[0].strip() != "orch: config error:", output


@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(text=mutated())
def test_check_through_the_real_cli(tmp_path, text):
    path = tmp_path / "workers.toml"
    write(path, text)
    result = orch("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def demo_master(start_master):
    master = start_master(SHIPPED["workers.toml"])
    return master, master.wait_running(5, timeout=20)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(text=mutated())
def test_a_running_master_keeps_its_fleet_for_a_file_that_does_not_validate(demo_master, text):
    master, pids = demo_master
    probe = master.config.with_name("probe.toml")
    write(probe, text)
    if check_in_process(probe)[0] == 0:
        event("valid: not fed")
        return  # a valid mutation would rightly change the fleet
    event("fed to the master")
    write(master.config, text)
    with pytest.raises(RuntimeError, match="reload failed, nothing changed|no instances"):
        master.call("reload")
    assert master.pids() == pids
    assert master.call("status")["reloads"] == 0
