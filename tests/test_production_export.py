"""Issue 26 in exports: each target carries what it can of user, group, groups, env_file,
rlimits, umask and stderr, says in one line per key what it cannot, and its own checker
still passes (systemd-analyze verify; supervisord's parser)."""

from __future__ import annotations

import copy
import json
import pwd
import subprocess
import textwrap

import pytest
import yaml

from conftest import orch
from test_export import NOMAD_JOB
from test_export_run import _kubernetes_validate, _verify_units

CONFIG = """
    [workers.a]
    command = "sleep 60"
    user = "daemon"
    env_file = ["-missing.env", "s.env"]
    env = { B = "from-env" }
    rlimits = { nofile = 4096, core = "unlimited" }
    umask = "027"
    stderr = "separate"
"""


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


@pytest.fixture
def config(tmp_path):
    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "s.env").write_text("export TOKEN='tok en'\nB=from-file\n")
    path = folder / "workers.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def _export(config, fmt, out):
    result = orch("export", "--format", fmt, "-c", str(config), "-o", str(out), "--image", "x", timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("orch export:")]


def test_systemd_carries_every_key_and_verifies(config, tmp_path):
    assert _export(config, "systemd", tmp_path / "units") == []
    unit = (tmp_path / "units" / "orch-fleet-a.service").read_text()
    for line in ("User=daemon", "EnvironmentFile=-", "EnvironmentFile=" + str(config.parent / "s.env"),
                 "LimitNOFILE=4096:4096", "LimitCORE=infinity:infinity", "UMask=0027",
                 "StandardError=append:"):
        assert line in unit, line
    assert "tok en" not in unit  # systemd reads the file itself
    _verify_units(tmp_path / "units")


def test_supervisord_inlines_env_files_and_says_what_it_cannot(config, tmp_path):
    warnings = _export(config, "supervisord", tmp_path / "out")
    assert warnings == ["orch export: supervisord cannot express workers.*.rlimits (set in a): "
                        "supervisord sets only its own minfds/minprocs; left out"]
    text = (tmp_path / "out" / "supervisord.conf").read_text()
    assert 'TOKEN="tok en"' in text and 'B="from-env"' in text and "from-file" not in text
    for line in ("user=daemon", "umask=027", "redirect_stderr=false", "stderr_logfile="):
        assert line in text, line


def test_supervisord_refuses_an_env_file_value_it_cannot_carry_without_quoting_it(config, tmp_path):
    (config.parent / "s.env").write_text('TOKEN="a\'b\\"c"\n')
    result = orch("export", "--format", "supervisord", "-c", str(config), "-o", str(tmp_path / "o"), timeout=60)
    assert result.returncode == 2 and "env_file (TOKEN)" in result.stderr and "a'b" not in result.stderr


@pytest.mark.parametrize("fmt, target, carried", [
    ("kubernetes", "kubernetes", ("user", "env_file")), ("nomad", "nomad", ("user", "env_file")),
    ("procfile", "a Procfile", ())])
def test_other_targets_say_one_line_per_key(config, tmp_path, fmt, target, carried):
    warnings = _export(config, fmt, tmp_path / "out")
    for key in ("user", "env_file", "rlimits", "umask", "stderr"):
        said = sum(f"{target} cannot express workers.*.{key} " in w for w in warnings)
        assert said == (0 if key in carried else 1), key
    text = "".join(p.read_text() for p in (tmp_path / "out").iterdir())
    assert ("tok en" in text) == ("env_file" in carried)


def test_kubernetes_runs_as_the_resolved_ids_with_env_files_in_a_secret(config, tmp_path):
    result = orch("export", "--format", "kubernetes", "-c", str(config), "-o", str(tmp_path / "k8s"),
                  "--image", "registry.example/app:1", timeout=60)
    assert result.returncode == 0, result.stderr
    daemon = pwd.getpwnam("daemon")
    assert f"orch export: kubernetes: user daemon resolved to uid {daemon.pw_uid} on this host" in result.stderr
    assert "tok en" not in result.stderr + result.stdout  # the value is in the file only
    file = tmp_path / "k8s" / "kubernetes.yaml"
    secret, deployment = yaml.safe_load_all(file.read_text())
    assert secret["kind"] == "Secret" and secret["stringData"] == {"TOKEN": "tok en"}  # `env` wins for B
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == daemon.pw_uid
    assert pod["securityContext"]["runAsGroup"] == daemon.pw_gid
    assert daemon.pw_gid in pod["securityContext"]["supplementalGroups"]
    container = pod["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert {"name": "B", "value": "from-env"} in container["env"]
    assert _kubernetes_validate(file).count("passed") == 2


def test_nomad_runs_the_task_as_the_user_with_env_files_inlined(config, tmp_path):
    out = tmp_path / "nomad"
    assert not any("cannot express workers.*.user" in w for w in _export(config, "nomad", out))
    (file,) = out.iterdir()
    document = json.loads(file.read_text())
    schema = copy.deepcopy(NOMAD_JOB)  # Nomad's documented task fields, with User added
    task_schema = schema["properties"]["Job"]["properties"]["TaskGroups"]["items"]["properties"]["Tasks"]["items"]
    task_schema["properties"]["User"] = {"type": "string"}
    import jsonschema
    jsonschema.validate(document, schema)
    task = document["Job"]["TaskGroups"][0]["Tasks"][0]
    assert task["User"] == "daemon"
    assert task["Env"]["TOKEN"] == "tok en" and task["Env"]["B"] == "from-env"


def test_nomad_refuses_interpolation_in_an_env_file_without_quoting_it(config, tmp_path):
    (config.parent / "s.env").write_text("TOKEN=x${NOMAD_SECRET}y\n")
    result = orch("export", "--format", "nomad", "-c", str(config), "-o", str(tmp_path / "o"), timeout=60)
    assert result.returncode == 2 and "env_file (TOKEN)" in result.stderr
    assert "NOMAD_SECRET" not in result.stderr
