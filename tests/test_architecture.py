"""The architecture's rules, checked on the source: no import cycles, one registry that every
plug-in kind goes through, and the task YAML agreeing with the registered metrics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from mmtoxicqa.core import registry
from mmtoxicqa.core.errors import MMToxError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmtoxicqa", "tasks", "model_wrappers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in the file (function-level imports too:
    a lazy import hides a cycle from Python, not from the design)."""
    modules = _project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the module pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that import each other (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _is_package_init_of(parent: str, child: str) -> bool:
    return child.startswith(parent + ".")


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """A package's ``__init__`` may import its own submodules to register plug-ins (the registry
    pattern); every other mutual import is a cycle to remove."""
    graph = import_graph()
    assert "mmtoxicqa.core.registry" in graph and "mmtoxicqa.methods.catalog" in graph
    pruned = {name: {t for t in targets if not _is_package_init_of(name, t)} for name, targets in graph.items()}
    assert strongly_connected(pruned) == []


def test_registry_holds_every_builtin_plugin():
    assert {"vanilla", "sgm", "aura", "coca", "steer", "safety_prompt"} <= set(registry.names("method"))
    assert {"profanity", "detoxify", "perspective", "hf_classifier"} <= set(registry.names("judge"))
    assert list(registry.entries("attack"))[0] == "typographic" and "roleplay" in registry.names("attack")
    assert "harmful_rate" in registry.names("metric")
    assert registry.lookup("judge", "detoxify").info["default_arg"] == "original"


def test_registry_errors_are_one_line():
    with pytest.raises(MMToxError, match=r"unknown judge 'nope'; known: .*profanity"):
        registry.lookup("judge", "nope")
    with pytest.raises(MMToxError, match="unknown plug-in kind 'widget'"):
        registry.entries("widget")


def test_a_name_registers_once():
    def first(loaded):
        return None

    def second(loaded):
        return None

    registry.register_method("_test_once")(first)
    try:
        registry.register_method("_test_once")(first)  # the same object again (a module re-import) is fine
        with pytest.raises(MMToxError, match="method '_test_once' is registered twice"):
            registry.register_method("_test_once")(second)
    finally:
        registry._ENTRIES["method"].pop("_test_once")


def test_task_yaml_metrics_are_the_registered_ones():
    """The task's metric_list and the registered metrics (name, direction, order) are one list."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    template = yaml.load((ROOT / "tasks/mm_toxic_qa/_mm_toxic_qa_template.yaml").read_text(), Loader=Loader)
    in_yaml = [(m["metric"], m["higher_is_better"], m["aggregation"]) for m in template["metric_list"]]
    registered = [(name, e.info["higher_is_better"], f"!function utils.{e.obj.__name__}") for name, e in registry.entries("metric").items()]
    assert in_yaml == registered
