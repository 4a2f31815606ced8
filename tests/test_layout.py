"""The package layout keeps its promises: no import circle between any two modules (lazy
imports inside functions and imports for type checking only count too), and code that runs inside children (worker/) never
imports the master's side."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_worker_code_never_imports_the_masters_side():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("orchestrator.worker"):
            bad = {t for t in targets if t.startswith(("orchestrator.supervise", "orchestrator.spawn",
                                                         "orchestrator.master", "orchestrator.control"))}
            assert not bad, f"{name} imports {bad}"


def test_the_graph_is_read():
    graph = import_graph()
    assert "orchestrator.supervise.states" in graph["orchestrator.supervise.supervisor"]
    assert "orchestrator.control.watch" in graph["orchestrator.master"], "lazy imports count"
    assert "orchestrator.spawn.zygote" in graph["orchestrator.spawn.helper"], "lazy imports count"


def _folder(module: str) -> str:
    """The folder (stage or edge) a module lives in: orchestrator.spawn.helper -> spawn; a
    module at the package root is a floor of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        here = _folder(name)
        graph.setdefault(here, set())
        for target in targets:
            there = _folder(target)
            graph.setdefault(there, set())
            if there != here:
                graph[here].add(there)
    return graph


def test_no_import_circles_between_folders():
    assert cycles(folder_graph()) == []


# The library rule: code that runs inside children or producers (the worker runtime, queue
# consumers, the task API) imports nothing of the master's side or the CLI.
MASTERS_SIDE = ("orchestrator.supervise", "orchestrator.spawn", "orchestrator.master", "orchestrator.control",
                "orchestrator.cli", "orchestrator.config", "orchestrator.expand", "orchestrator.observe",
                "orchestrator.export", "orchestrator.plan")


def test_libraries_for_children_never_import_the_masters_side():
    for name, targets in import_graph().items():
        if name.startswith(("orchestrator.worker", "orchestrator.queues", "orchestrator.tasks")):
            bad = {t for t in targets if t.startswith(MASTERS_SIDE)}
            assert not bad, f"{name} imports {bad}"


FLOORS = {  # lower floors never import higher ones (the README's Architecture section)
    "orchestrator": 0, "errors": 0, "units": 0, "title": 0, "wakeup": 0, "procfs": 0,
    "loop": 1, "config": 1, "worker": 1,
    "acceptor": 2, "expand": 2, "queues": 2, "demo": 2,
    "plan": 3, "export": 3, "spawn": 3, "observe": 3, "tasks": 3,
    "supervise": 4, "control": 5, "web": 5, "handover": 5, "master": 6, "cli": 7, "__main__": 8,
}


def test_no_arrow_runs_back_up_between_folders():
    graph = folder_graph()
    assert set(graph) <= set(FLOORS), f"a folder without a floor: {set(graph) - set(FLOORS)}"
    up = [(a, b) for a, targets in graph.items() for b in targets
          if a in FLOORS and b in FLOORS and FLOORS[b] > FLOORS[a]]
    assert not up, f"lower floors import higher ones: {up}"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


def test_the_readme_names_only_modules_and_folders_that_exist():
    import re
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:[a-z_]+/)+|[a-z_]+(?:/[a-z_]+)*\.py)`", section))
    assert named, "the Architecture section names no module"
    missing = [n for n in named if not (PACKAGE / n).exists() and not (PACKAGE.parent / n).exists()]
    assert not missing, f"the README's Architecture section names what is not there: {missing}"
