"""The deployer's dependency arrows point one way: models -> rules -> plan -> transport ->
backends / runs / executor -> commands -> cli. Read from the source (every `import` and
`from ... import`, function-local ones included), so a new import against the arrows fails here
rather than in a reviewer's head."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "q7x2_deploy"

# A unit is a top-level module or a subpackage of q7x2_deploy.
# The command layer and the sandbox (a tool of its own, root only) are imported by nothing below.
TOP = {"q7x2_deploy.cli", "q7x2_deploy.commands", "q7x2_deploy.sandbox"}


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in ROOT.rglob("*.py"):
        here = _unit(_module_name(path))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
                if node.module == "q7x2_deploy":  # `from q7x2_deploy import x`: x may be a module
                    targets = [f"q7x2_deploy.{a.name}" for a in node.names
                               if (ROOT / f"{a.name}.py").exists() or (ROOT / a.name).is_dir()]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.startswith("q7x2_deploy.") and _unit(t) != here:
                    edges[here][_unit(t)].add(str(path.relative_to(ROOT.parent)))
    return edges


def _cycle(edges: dict[str, dict[str, set[str]]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, {})):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_units_import_each_other_without_a_cycle() -> None:
    edges = import_edges()
    cycle = _cycle(edges)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(sorted(edges[a][b]))})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle: " + "; ".join(steps))


def test_nothing_below_the_commands_imports_them_or_the_sandbox() -> None:
    edges = import_edges()
    wrong = {f"{u} -> {v}: {sorted(files)}" for u, targets in edges.items() if u not in TOP
             for v, files in targets.items() if v in TOP}
    assert not wrong, sorted(wrong)


def test_the_models_and_rules_import_no_machinery() -> None:
    """The inventory models and their rules know nothing of hosts, transports or containers."""
    machinery = {"q7x2_deploy.executor", "q7x2_deploy.transport", "q7x2_deploy.backends",
                 "q7x2_deploy.runs", "q7x2_deploy.image", "q7x2_deploy.plan"}
    edges = import_edges()
    for unit in ("q7x2_deploy.inventory", "q7x2_deploy.validation", "q7x2_deploy.scheduler_spec"):
        assert not machinery & set(edges.get(unit, {})), (unit, dict(edges[unit]))


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b": {"a.py"}}, "b": {"c": {"b.py"}}, "c": {"a": {"c.py"}}}
    assert _cycle(edges) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": {"a.py"}}}) is None
