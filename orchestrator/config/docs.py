"""man/workers.toml.5, generated from `keys.KEYS`: `python -m orchestrator.config.docs >
man/workers.toml.5` rewrites it, and tests/test_keys_man.py checks the file against the table."""

from __future__ import annotations

import json

from .. import __version__
from .keys import KEYS, TEMPLATE_ONLY, Key

_HEAD = r""".TH WORKERS.TOML 5 "" "orch {version}" "File Formats"
.SH NAME
workers.toml \- the fleet that orch(1) runs: templates x matrices x replicas
.SH DESCRIPTION
A TOML file with up to five tables: \fB[orchestrator]\fR (settings of the master),
\fB[vars]\fR (values every template can use), \fB[defaults]\fR (merged into every template),
one \fB[sockets.\fINAME\fB]\fR table per shared listening socket, and one
\fB[workers.\fINAME\fB]\fR table per template. Unknown keys are errors.
.PP
Durations are "250ms", "10s", "5m", "6h", "1d" or a number of seconds; sizes are "512KiB",
"200MiB", "1GB" or a number of bytes; signals are names like "TERM" or "SIGINT", or numbers.
String values of template keys are Jinja templates (sandboxed, undefined names are errors)
that see the instance's matrix parameters, \fB[vars]\fR, \fBreplica\fR, \fBtemplate\fR,
\fBname\fR and \fBpython\fR.
.PP
Each key says what changing it does to a running fleet on reload: \fIrestarts the
instance\fR (its process changes), \fIstarts or stops instances\fR (the set of names
changes; unchanged names keep their pid), \fIapplied in place\fR (supervision only, no
restart), \fIapplied live\fR or \fIneeds a restart of the master\fR (settings).
"""

_DEFAULTS = r""".SH [defaults]
Any key of a template except {template_only}. A template's own value wins; the tables
\fBbackoff\fR, \fBmemory\fR, \fBenv\fR and \fBrlimits\fR merge key by key.
.SH [vars]
Free\-form values for the templates, e.g. \fBqueues = ["queue1", "queue2"]\fR used as
\fBmatrix = {{ queue = "{{{{ queues }}}}" }}\fR. Included files may add vars, never redefine them.
"""

_TAIL = r""".SH EDITORS
\fBorch schema\fR prints a JSON Schema (draft 2020\-12) generated from the same declarations
as this page; with Taplo or Even Better TOML, a first line
\fB#:schema ./workers.schema.json\fR checks the file as you type.
.SH SEE ALSO
orch(1), systemd.service(5), supervisord(1)
"""


def _text(value: str) -> str:
    """Text safe in a troff line: backslashes escaped, hyphens literal."""
    return value.replace("\\", "\\e").replace("-", "\\-")


def _default(key: Key) -> str:
    if key.default_from:
        return f"the value of {key.default_from}"
    if key.default is None:
        return "unset"
    return json.dumps(key.default, ensure_ascii=False)


def _entry(key: Key, prefix: str) -> str:
    name = key.path[len(prefix):]
    return (f".TP\n.B {_text(name)}\n{_text(key.type.name)}; default {_text(_default(key))}; "
            f"{key.kind.value}.\n{_text(key.doc[0].upper() + key.doc[1:])}.\n.br\nExample: \\fB{_text(name)} = "
            f"{_text(key.example)}\\fR\n")


def render() -> str:
    """The whole man page."""
    parts = [_HEAD.format(version=__version__), ".SH [orchestrator]\n"]
    parts += [_entry(k, "orchestrator.") for k in KEYS if k.section == "orchestrator"]
    parts.append(".SH [workers.NAME]\n")
    parts += [_entry(k, "workers.*.") for k in KEYS if k.section == "workers"]
    parts.append(".SH [sockets.NAME]\nA listening socket the master binds once and passes to the "
                 "instances whose \\fBsockets\\fR name it (see orch(1), SOCKETS).\n")
    parts += [_entry(k, "sockets.*.") for k in KEYS if k.section == "sockets"]
    parts.append(".SH [[hooks]]\nA command the master runs, through its spawner, when an event of one of "
                 "the kinds in \\fBon\\fR happens (see orch(1), events); a hook that fails or times out is "
                 "logged once and never holds up the master.\n")
    parts += [_entry(k, "hooks.*.") for k in KEYS if k.section == "hooks"]
    template_only = ", ".join(f"\\fB{name}\\fR" for name in TEMPLATE_ONLY)
    parts.append(_DEFAULTS.format(template_only=template_only))
    parts.append(_TAIL)
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
