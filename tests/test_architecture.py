"""The architecture's rules, checked on the source: no import cycles, one registry that every
plug-in kind goes through, and the task YAML agreeing with the registered metrics."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from mmtoxicqa.core import registry
from mmtoxicqa.core.errors import MMToxError

ROOT = Path(__file__).resolve().parents[1]
# folder -> the import name it is installed under (pyproject's package-dir): the plug-in folders are
# checked under the names the code imports them by.
PACKAGES = {"mmtoxicqa": "mmtoxicqa", "tasks": "mmtoxicqa.tasks", "model_wrappers": "mmtoxicqa.model_wrappers"}

# The layers, bottom first: a module may import its own layer's modules and any layer below, never one
# above. The plug-in layer is what lmms-eval loads: the task folder, the model wrappers and the
# LMMS_EVAL_PLUGINS hook module ``mmtoxicqa.models``.
LAYERS = (
    ("core", ("mmtoxicqa", "mmtoxicqa.core")),
    ("data", ("mmtoxicqa.data",)),
    ("metrics", ("mmtoxicqa.metrics",)),
    ("scoring", ("mmtoxicqa.scoring",)),
    ("modeling", ("mmtoxicqa.modeling",)),
    ("sgm", ("mmtoxicqa.sgm",)),
    ("methods", ("mmtoxicqa.methods",)),
    ("lmms", ("mmtoxicqa.lmms",)),
    ("plugins", ("mmtoxicqa.tasks", "mmtoxicqa.model_wrappers", "mmtoxicqa.models")),
    ("study", ("mmtoxicqa.study",)),
    ("cli", ("mmtoxicqa.cli",)),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that owns ``module``."""
    best, rank = "", None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank is None:
        raise AssertionError(f"{module} belongs to no layer; add its folder to LAYERS")
    return rank


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules(root: Path) -> dict[str, Path]:
    found = {}
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            found[_module_name(path, root)] = path
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in the file (function-level imports too:
    a lazy import hides a cycle from Python, not from the design)."""
    modules = _project_modules(root)
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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every edge that points to a higher layer, as 'importer (layer) -> imported (layer)'."""
    found = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(name):
                found.append(f"{name} ({LAYERS[layer_of(name)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})")
    return found


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


def test_layers_import_only_downward():
    graph = import_graph()
    assert "mmtoxicqa.tasks.mm_toxic_qa.utils" in graph and "mmtoxicqa.model_wrappers.mmtox" in graph  # the plug-in folders are seen
    assert graph["mmtoxicqa.tasks.mm_toxic_qa.utils"], "the task glue's imports are checked"
    assert upward_imports(graph) == []


def test_layer_check_fails_on_a_planted_upward_import(tmp_path):
    """A copy of the package with one upward import planted in the bottom layer: the check names it."""
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert upward_imports(import_graph(tmp_path)) == []
    planted = tmp_path / "mmtoxicqa/core/hashing.py"
    planted.write_text(planted.read_text() + "\nfrom mmtoxicqa.study import sweep  # planted\n")
    assert upward_imports(import_graph(tmp_path)) == ["mmtoxicqa.core.hashing (core) -> mmtoxicqa.study.sweep (study)"]
    wrapper = tmp_path / "model_wrappers/mmtox.py"  # a plug-in module importing the study layer, by its import name
    wrapper.write_text(wrapper.read_text() + "\nimport mmtoxicqa.cli  # planted\n")
    assert "mmtoxicqa.model_wrappers.mmtox (plugins) -> mmtoxicqa.cli (cli)" in upward_imports(import_graph(tmp_path))


def test_top_level_holds_layers_not_modules():
    """The package's top level: the layer folders, the version and lmms-eval's plug-in hook module."""
    files = sorted(p.name for p in (ROOT / "mmtoxicqa").glob("*.py"))
    assert files == ["__init__.py", "models.py"]
    folders = sorted(p.name for p in (ROOT / "mmtoxicqa").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(
        name.rpartition(".")[2]
        for _, prefixes in LAYERS
        for name in prefixes
        if name.count(".") == 1 and (ROOT / name.replace(".", "/")).is_dir()
    )


def _env_reads(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            lines.append(node.lineno)
    return lines


def test_environment_is_read_only_in_settings():
    """Only core/settings.py reads the environment (the command-line layer may set defaults for the libraries it runs)."""
    readers = {}
    for name, path in _project_modules(ROOT).items():
        if name != "mmtoxicqa.core.settings" and layer_of(name) != layer_of("mmtoxicqa.cli") and _env_reads(path):
            readers[name] = _env_reads(path)
    assert readers == {}


def test_settings_table_is_documented():
    from mmtoxicqa.core import settings

    readme = (ROOT / "README.md").read_text()
    assert [name for name in settings.VARIABLES if f"`{name}`" not in readme] == []
    with pytest.raises(KeyError, match="MMTOXICQA_NOPE is not declared"):
        settings.raw("MMTOXICQA_NOPE")


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function body."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_function_level_imports_are_heavy_optional_dependencies():
    """A project module is imported at the top of the file (the layers, not import order, decide what
    may import what); a function-level import is only for a heavy or optional third-party library, and
    says so in a comment on its line or the line above."""
    project, uncommented = [], []
    for name, path in _project_modules(ROOT).items():
        lines = path.read_text().splitlines()
        for lineno, module in _function_imports(path):
            if module.startswith("mmtoxicqa") or module.startswith("."):
                project.append(f"{name}:{lineno} {module}")
            elif "#" not in lines[lineno - 1] and not lines[lineno - 2].strip().startswith("#"):
                uncommented.append(f"{name}:{lineno} {module}")
    assert project == []
    assert uncommented == []


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


def test_cache_keys_pinned(monkeypatch):
    """Glasses cache paths and sweep cell names are pinned: a file cached or a cell committed is found again
    (the powered study's cells carry ab46a59c16d5, computed before the layers moved, commit 28ac820). The
    glasses keys changed once on purpose, with FIT_VERSION 2 (right-padded calibration batches), so that
    glasses fitted with left padding are fitted again; the cell names did not change."""
    from mmtoxicqa.sgm.calibration import FIT_VERSION, glasses_cache_path, sgm_options
    from mmtoxicqa.study.sweep import cell_key

    monkeypatch.setenv("MMTOXICQA_CACHE", "/c")
    assert FIT_VERSION == 2
    embedded = glasses_cache_path("embedded:smollm2-135m-instruct-llava-b179c9523d0e6a0f", "abc", sgm_options())
    assert str(embedded) == "/c/glasses/embedded_smollm2-135m-instruct-llava-b179c9523d0e6a0f-02ca7c56a4c68626b482.safetensors"
    site = glasses_cache_path("organism:organism-embedded-689428d760bfac3b", "abc", sgm_options(tokens="answer", site="gate_up_output"))
    assert site.name == "organism_organism-embedded-689428d760bfac3b-447ccc450ac41a5d9cf5.safetensors"
    assert cell_key("organism", "sgm", "mm_toxic_qa_organism", "answer") == "ab46a59c16d5"
    assert any(p.name.endswith("__ab46a59c16d5.json") for p in (ROOT / "results/organism/powered/cells").iterdir())
