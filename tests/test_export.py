"""The exporters as pure functions: systemd's quoting parsed back with systemd's own rules,
names escaped like systemd-escape, Nomad's documented job JSON, Kubernetes grouping and
host-independence, warnings for what a target cannot express, and refusals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import orch
from export_cases import HARD_ARGS, HARD_ENV, config_text, options_of, specs_of, write

from orchestrator.errors import ConfigError
from orchestrator.export import export
from orchestrator.export.systemd import escape_name

_C = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
      '"': '"', "'": "'", "s": " "}


def systemd_split(value: str, expand_dollars: bool) -> list[str]:
    """A setting's words as systemd reads them (systemd.syntax(7), systemd.service(5)): %%
    specifiers first, then words split at whitespace outside quotes, C escapes decoded, then
    (ExecStart= only) $$ -> $. Fails on anything it does not expect us to write."""
    assert not re.search(r"%[^%]", value.replace("%%", "")), value
    value = value.replace("%%", "%")
    words: list[str] = []
    i, word, quote, in_word = 0, [], "", False
    while i < len(value):
        char = value[i]
        if char == "\\":
            code = value[i + 1]
            if code == "x":
                word.append(chr(int(value[i + 2:i + 4], 16)))
                i += 4
            else:
                word.append(_C[code])
                i += 2
            in_word = True
            continue
        if quote:
            quote = "" if char == quote else quote
            if quote:
                word.append(char)
        elif char in "\"'":
            quote, in_word = char, True
        elif char in " \t":
            if in_word:
                words.append("".join(word))
            word, in_word = [], False
        else:
            word.append(char)
            in_word = True
        i += 1
    assert not quote, f"unbalanced quote in {value!r}"
    if in_word:
        words.append("".join(word))
    if expand_dollars:
        assert all(not re.search(r"\$[^$]", w.replace("$$", "")) for w in words), words
        words = [w.replace("$$", "$") for w in words]
    return words


def _settings(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return write(tmp_path / "fleet", config_text(extra_env={"NL": "one\ntwo"},
                                                 extra_args=["new\nline", "${HOME}"]))


@pytest.fixture
def nomad_fleet(tmp_path: Path) -> Path:
    """The fleet without '${', which Nomad would interpolate."""
    return write(tmp_path / "nomad", config_text(extra_env={"NL": "one\ntwo"}, extra_args=["new\nline"]))


def test_exec_start_and_environment_parse_back_to_the_spec(fleet):
    specs = specs_of(fleet)
    out = export("systemd", specs, options_of(fleet))
    units = {name: text for name, text in out.files.items() if name.endswith(".service")}
    assert len(units) == len(specs) == 12
    for spec in specs:
        text = units[f"orch-quoting\\x20test-{escape_name(spec.name)}.service"]
        (exec_start,) = _settings(text, "ExecStart")
        assert systemd_split(exec_start, expand_dollars=True) == list(spec.argv)
        env = [systemd_split(v, expand_dollars=False) for v in _settings(text, "Environment")]
        assert all(len(words) == 1 for words in env)
        assert dict(w[0].split("=", 1) for w in env) == {"ORCH_INSTANCE": spec.name, **dict(spec.env)}
        (cwd,) = _settings(text, "WorkingDirectory")
        assert cwd.replace("%%", "%") == spec.cwd


def test_systemd_maps_the_policy(fleet):
    out = export("systemd", specs_of(fleet), options_of(fleet))
    argv = next(t for n, t in out.files.items() if "argv" in n and n.endswith(".service"))
    string = next(t for n, t in out.files.items() if "string" in n and n.endswith(".service"))
    for line in ("Restart=always", "KillMode=mixed", "KillSignal=SIGINT", "TimeoutStopSec=10",
                 f"MemoryHigh={100 * 2**20}", f"MemoryMax={200 * 2**20}", "Type=exec", "RestartSec=1"):
        assert line in argv.splitlines(), line
    for line in ("Restart=on-failure", "Type=notify", "WatchdogSec=30", "RuntimeMaxSec=3600",
                 "KillMode=control-group", "KillSignal=SIGTERM"):
        assert line in string.splitlines(), line
    fleet_target = out.files["orch-quoting\\x20test.target"]
    assert "Wants=orch-quoting\\x20test-argv.target" in fleet_target and "WantedBy=multi-user.target" in fleet_target
    template_target = out.files["orch-quoting\\x20test-argv.target"]
    assert template_target.count("Wants=") == 6 and "PartOf=orch-quoting\\x20test.target" in template_target


@pytest.mark.parametrize("text", ["consumer-10.0.0.1-queue1", ".hidden", "a/b", "naïve ☃", "x y\\z",
                                  "it's", "100%", "a:b_c", "é.é"])
def test_names_are_escaped_like_systemd_escape(text):
    real = subprocess.run(["systemd-escape", "--", text], capture_output=True, text=True, timeout=10)
    assert real.returncode == 0, real.stderr
    assert escape_name(text) == real.stdout.strip()


def test_supervisord_and_procfile_refuse_a_newline_with_the_key(fleet):
    for fmt in ("supervisord", "procfile"):
        with pytest.raises(ConfigError) as caught:
            export(fmt, specs_of(fleet), options_of(fleet))
        keys = {p.keypath for p in caught.value.problems}
        assert keys == {"workers.argv.env.NL", "workers.argv.command"}, keys
        assert all("newline" in p.message and p.file == str(fleet) for p in caught.value.problems)


@pytest.mark.parametrize("value, why", [
    ("both ' and \"", "both ' and"), ("'quoted'", "starting or ending with a quote"),
    ("a ;comment", "whitespace before ; or #"), ("x %(here)s", "%(here)s")])
def test_supervisord_refuses_environment_values_it_would_change(tmp_path, value, why):
    path = write(tmp_path, config_text(extra_env={"BAD": value}))
    with pytest.raises(ConfigError, match=re.escape(why)):
        export("supervisord", specs_of(path), options_of(path))


def test_warnings_name_each_key_a_target_cannot_express_once(fleet):
    out = export("supervisord", [], options_of(fleet))
    assert out.warnings == []  # nothing set, nothing to warn about
    path = write(fleet.parent.parent / "ok", config_text())
    out = export("supervisord", specs_of(path), options_of(path))
    assert out.warnings == [
        "orch export: supervisord cannot express workers.*.memory.soft (set in argv): left out",
        "orch export: supervisord cannot express workers.*.memory.hard (set in argv): left out",
        "orch export: supervisord cannot express workers.*.max_lifetime (set in string): left out",
        "orch export: supervisord cannot express workers.*.timeout (set in string): left out"]
    systemd = export("systemd", specs_of(path), options_of(path)).warnings
    assert systemd == []  # everything this config sets has a systemd setting


def test_kubernetes_carries_replicas_unless_a_field_uses_the_replica(fleet):
    out = export("kubernetes", specs_of(fleet), options_of(fleet, image="img:1"))
    import yaml  # kubernetes-validate's dependency: reads our YAML like kubectl does
    documents = list(yaml.safe_load_all(out.files["kubernetes.yaml"]))
    by_template: dict[str, list[dict]] = {}
    for doc in documents:
        by_template.setdefault(doc["metadata"]["labels"]["orch/template"], []).append(doc)
    assert [d["spec"]["replicas"] for d in by_template["argv"]] == [2, 2, 2]  # replica not used
    assert [d["spec"]["replicas"] for d in by_template["string"]] == [1] * 6  # {{ replica }} used
    specs = {s.name: s for s in specs_of(fleet)}
    container = by_template["argv"][0]["spec"]["template"]["spec"]["containers"][0]
    argv = [a.replace("$$", "$") for a in container["command"] + container["args"]]
    assert argv == ["python3"] + list(specs["argv-x_y"].argv[1:])
    env = {e["name"]: e.get("value", "").replace("$$", "$") for e in container["env"]}
    assert env == {"ORCH_INSTANCE": "", **dict(specs["argv-x_y"].env)}
    assert container["resources"] == {"requests": {"memory": str(100 * 2**20)},
                                      "limits": {"memory": str(200 * 2**20)}}
    assert container["workingDir"] == "/app"
    string = by_template["string"][0]["spec"]["template"]["spec"]
    assert string["containers"][0]["workingDir"] == "/app/sub dir"
    assert string["terminationGracePeriodSeconds"] == 10


_LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_kubernetes_names_and_labels_are_legal_and_unique(fleet):
    import yaml
    out = export("kubernetes", specs_of(fleet), options_of(fleet, image="img:1"))
    documents = list(yaml.safe_load_all(out.files["kubernetes.yaml"]))
    names = [d["metadata"]["name"] for d in documents]
    assert len(set(names)) == len(names) == 9
    for doc in documents:
        assert _DNS_LABEL.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 63
        for key, value in doc["metadata"]["labels"].items():
            assert _LABEL.match(value) and len(value) <= 63, (key, value)
        assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()


def _host_paths(text: str, fleet: Path) -> list[str]:
    return [p for p in (sys.executable, str(Path(sys.executable).parent), str(fleet.parent)) if p in text]


def test_kubernetes_and_nomad_hold_no_path_of_this_machine(nomad_fleet):
    for fmt in ("kubernetes", "nomad"):
        out = export(fmt, specs_of(nomad_fleet), options_of(nomad_fleet, image="img:1",
                                                            python="/usr/bin/python3", workdir="/srv/app"))
        for name, text in out.files.items():
            assert not _host_paths(text, nomad_fleet), (fmt, name)
            assert "/srv/app/sub dir" in text and "/usr/bin/python3" in text


def test_python_targets_export_as_python_m_orchestrator_worker(tmp_path):
    path = write(tmp_path, '[workers.py]\ntarget = "app:Idle"\nkwargs = { q = "a b" }\npythonpath = ["src"]\n')
    out = export("kubernetes", specs_of(path), options_of(path, image="img"))
    import yaml
    container = next(yaml.safe_load_all(out.files["kubernetes.yaml"]))["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python3"]
    assert container["args"][:4] == ["-m", "orchestrator.worker", "--target", "app:Idle"]
    assert container["args"][-4:] == ["--pythonpath", "/app", "--pythonpath", "/app/src"]
    unit = next(t for n, t in export("systemd", specs_of(path), options_of(path)).files.items()
                if n.endswith(".service"))
    argv = systemd_split(_settings(unit, "ExecStart")[0], expand_dollars=True)
    assert argv == list(specs_of(path)[0].argv) and argv[0] == sys.executable


_INT = {"type": "integer", "minimum": 0}
_NANOSECONDS = {"type": "integer", "minimum": 1_000_000}  # a Go time.Duration: never seconds
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _object(required: list[str], **properties: dict) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


# The fields of Nomad's JSON job (https://developer.hashicorp.com/nomad/api-docs/json-jobs) we use,
# with their documented types.
NOMAD_JOB = _object(["Job"], Job=_object(
    ["ID", "Name", "Type", "TaskGroups"], ID={"type": "string", "pattern": "^[a-z0-9-]+$"},
    Name={"type": "string"}, Type={"enum": ["service", "batch", "system", "sysbatch"]},
    Datacenters={"type": "array", "items": {"type": "string"}},
    TaskGroups={"type": "array", "minItems": 1, "items": _object(
        ["Name", "Count", "Tasks"], Name={"type": "string"}, Count={"type": "integer", "minimum": 1},
        RestartPolicy=_object(["Attempts", "Interval", "Delay", "Mode"], Attempts=_INT,
                              Interval=_NANOSECONDS, Delay=_INT, Mode={"enum": ["delay", "fail"]}),
        Update=_object([], MaxParallel={"type": "integer", "minimum": 1}),
        Tasks={"type": "array", "minItems": 1, "maxItems": 1, "items": _object(
            ["Name", "Driver", "Config", "KillTimeout", "KillSignal"], Name={"type": "string"},
            Driver={"enum": ["exec", "docker"]},
            Config={"anyOf": [
                _object(["command", "args"], command={"type": "string"},
                        args={"type": "array", "items": {"type": "string"}}),
                _object(["image", "entrypoint", "args", "work_dir"], image={"type": "string"},
                        entrypoint={"type": "array", "items": {"type": "string"}},
                        args={"type": "array", "items": {"type": "string"}}, work_dir={"type": "string"})]},
            Env=_STRINGS, Meta=_STRINGS, KillTimeout=_NANOSECONDS,
            KillSignal={"type": "string", "pattern": "^SIG[A-Z0-9]+$"},
            Resources=_object(["CPU", "MemoryMB"], CPU=_INT, MemoryMB=_INT, MemoryMaxMB=_INT))})}))


@pytest.mark.parametrize("image", [None, "registry.example/app:1"])
def test_nomad_job_has_the_documented_structure(nomad_fleet, image):
    import jsonschema
    out = export("nomad", specs_of(nomad_fleet), options_of(nomad_fleet, image=image))
    ((name, text),) = out.files.items()
    assert re.fullmatch(r"quoting-test-[0-9a-f]{8}\.nomad\.json", name), name
    document = json.loads(text)
    jsonschema.validate(document, NOMAD_JOB)
    groups = document["Job"]["TaskGroups"]
    assert sorted(g["Count"] for g in groups) == [1] * 6 + [2] * 3
    task = next(g for g in groups if g["Count"] == 2)["Tasks"][0]
    assert task["KillTimeout"] == 10 * 1_000_000_000 and task["KillSignal"] == "SIGINT"
    assert next(g for g in groups if g["Count"] == 2)["RestartPolicy"]["Delay"] == 1_000_000_000
    assert task["Resources"] == {"CPU": 100, "MemoryMB": 100, "MemoryMaxMB": 200}
    assert task["Env"]["NL"] == "one\ntwo" and task["Env"]["ORCH_INSTANCE"].endswith("-${NOMAD_ALLOC_INDEX}")
    config = task["Config"]
    argv = [config["command"]] if image is None else config["entrypoint"]
    spec = next(s for s in specs_of(nomad_fleet) if s.template == "argv")
    assert argv + config["args"] == ["python3"] + list(spec.argv[1:])


def test_nomad_refuses_interpolation_it_cannot_escape(fleet):
    with pytest.raises(ConfigError, match=r"workers.argv.command.*nomad cannot carry '\$\{'"):
        export("nomad", specs_of(fleet), options_of(fleet))


def test_cli_needs_an_image_for_kubernetes_and_prints_warnings(fleet, tmp_path):
    result = orch("export", "--format", "kubernetes", "-c", str(fleet), timeout=30)
    assert result.returncode == 2 and "--image" in result.stderr and not result.stdout
    result = orch("export", "--format", "procfile", "-c", str(fleet), timeout=30)
    assert result.returncode == 2 and "workers.argv.env.NL" in result.stderr
    assert "Traceback" not in result.stderr
    plain = write(tmp_path / "plain", config_text())
    result = orch("export", "--format", "procfile", "-c", str(plain), timeout=30)
    assert result.returncode == 0 and result.stdout.count("\n") == 12
    assert "cannot express workers.*.memory.soft (set in argv)" in result.stderr
    result = orch("export", "--format", "yaml", "-c", str(plain), timeout=30)
    assert result.returncode == 2


def test_the_hard_values_are_really_in_the_test_config(fleet):
    spec = specs_of(fleet)[0]
    assert list(spec.argv[3:3 + len(HARD_ARGS)]) == HARD_ARGS
    assert HARD_ENV.items() <= dict(spec.env).items()


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_nomad_export_of_every_shipped_config_has_the_documented_structure(path):
    import jsonschema
    out = export("nomad", specs_of(path), options_of(path))
    for text in out.files.values():
        jsonschema.validate(json.loads(text), NOMAD_JOB)
        assert str(path.parent) not in text and sys.executable not in text


@pytest.mark.parametrize("fmt, program, why", [
    ("systemd", "-prog", "starting with @ - : + ! or |"), ("procfile", "a=b", "'=' in the program name")])
def test_program_names_a_format_would_misread_are_refused(tmp_path, fmt, program, why):
    path = write(tmp_path, f'[workers.w]\ncommand = ["{program}", "--x=1"]\n')
    with pytest.raises(ConfigError, match=re.escape(why)):
        export(fmt, specs_of(path), options_of(path))
    fine = write(tmp_path / "fine", '[workers.w]\ncommand = ["prog", "-a=b", "@x"]\n')
    assert export(fmt, specs_of(fine), options_of(fine)).files


def test_preload_and_a_clean_environment_are_warned_about_where_lost(tmp_path):
    path = write(tmp_path, '[workers.py]\ntarget = "app:Idle"\npreload = true\ninherit = false\n')
    specs, options = specs_of(path), options_of(path, image="img")
    supervisord = export("supervisord", specs, options).warnings
    assert "orch export: supervisord cannot express workers.*.preload (set in py): left out" in supervisord
    assert "orch export: supervisord cannot express workers.*.inherit = false (set in py): left out" in supervisord
    procfile = export("procfile", specs, options)
    assert all("inherit" not in w for w in procfile.warnings)  # env -i does it
    assert " exec env -i -- ORCH_INSTANCE=py " in procfile.files["Procfile"]


SOCKETS = """
[orchestrator]
name = "pool"

[sockets.web]
bind = "127.0.0.1:{port}"
backlog = 64

[sockets.admin]
bind = "unix:admin.sock"
mode = "0660"

[sockets.v6]
bind = "[::1]:{port}"

[workers.web]
command = "{python} -m orchestrator.demo.web --fd {{{{ sockets.web.fd }}}}"
sockets = ["admin", "web"]
replicas = 2

[workers.plain]
command = "sleep 100"
"""


def _socket_fleet(tmp_path: Path, port: int = 8000) -> Path:
    return write(tmp_path / "sockets", SOCKETS.format(port=port, python=sys.executable))


def test_systemd_exports_each_used_socket_as_a_socket_unit_passed_in_order(tmp_path):
    path = _socket_fleet(tmp_path)
    out = export("systemd", specs_of(path), options_of(path))
    web, admin = out.files["orch-pool-socket-web.socket"], out.files["orch-pool-socket-admin.socket"]
    assert _settings(web, "ListenStream") == ["127.0.0.1:8000"] and _settings(web, "Backlog") == ["64"]
    assert _settings(web, "FileDescriptorName") == ["web"] and _settings(web, "Service") == ["orch-pool-web.service"]
    assert _settings(admin, "ListenStream") == [str(tmp_path / "sockets" / "admin.sock")]
    assert _settings(admin, "SocketMode") == ["0660"]
    assert "orch-pool-socket-v6.socket" not in out.files, "a socket no template names is not exported"
    for unit in ("orch-pool-web.service", "orch-pool-web\\x2d1.service"):
        assert _settings(out.files[unit], "Sockets") == ["orch-pool-socket-admin.socket orch-pool-socket-web.socket"]
        assert _settings(out.files[unit], "Requires") == ["orch-pool-socket-admin.socket",
                                                          "orch-pool-socket-web.socket"]
    assert "Sockets" not in out.files["orch-pool-plain.service"]



def test_supervisord_and_procfile_run_socket_workers_under_the_bind_wrapper(tmp_path):
    """No master holds the socket there: each process binds its own (TCP, SO_REUSEPORT) via
    orchestrator.worker.listen, said in a warning; a unix socket shared by replicas is refused."""
    path = _socket_fleet(tmp_path)
    for fmt in ("supervisord", "procfile"):
        with pytest.raises(ConfigError) as caught:
            export(fmt, specs_of(path), options_of(path))
        assert "workers.web.sockets" in str(caught.value) and "unix: socket admin" in str(caught.value)
    path = write(tmp_path / "tcp", SOCKETS.format(port=8000, python=sys.executable).replace(
        'sockets = ["admin", "web"]', 'sockets = ["web"]'))
    for fmt, name in (("supervisord", "supervisord.conf"), ("procfile", "Procfile")):
        out = export(fmt, specs_of(path), options_of(path))
        assert any("cannot hold workers.*.sockets (set in web)" in w and "SO_REUSEPORT" in w
                   for w in out.warnings), (fmt, out.warnings)
        text = out.files[name].replace("'", "")  # supervisord quotes every word
        assert text.count("-m orchestrator.worker.listen web/64=127.0.0.1:8000 -- ") == 2, text
        assert "orchestrator.worker.listen" not in next(line for line in text.splitlines() if "sleep" in line)


def test_an_exported_socket_and_service_serve_under_socket_activation(tmp_path):
    """The .socket unit's address and name with the .service's ExecStart, run the way systemd
    would (systemd-socket-activate passes LISTEN_FDS as a .socket unit does): a real request
    is answered."""
    import shutil
    import socket as socketlib
    import urllib.request

    from conftest import wait_for
    from servers import free_port
    port = free_port()
    path = write(tmp_path / "one", SOCKETS.format(port=port, python=sys.executable).replace(
        'sockets = ["admin", "web"]', 'sockets = ["web"]'))
    out = export("systemd", specs_of(path), options_of(path))
    unit = out.files["orch-pool-socket-web.socket"]
    (argv,) = [systemd_split(v, True) for v in _settings(out.files["orch-pool-web.service"], "ExecStart")]
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate is not installed (scripts/test-deps installs systemd)"
    proc = subprocess.Popen([activate, "-l", _settings(unit, "ListenStream")[0],
                             f"--fdname={_settings(unit, 'FileDescriptorName')[0]}", "--", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def answered() -> bool:
            try:
                with socketlib.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(answered, 10, message="the socket to listen")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            assert reply.status == 200
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
