"""The package's layers, read from its imports with `ast`: no circles, imports flow one way.

commands (runner.train, grid, submit, tune, migrate, status) -> runner.cli -> runner.launch ->
runner.training -> runner.data / runner.spec -> runner.losses -> runner.store ->
runner.config / runner.dist. analysis reads results through runner.store and uses
runner.config, the runner.data package's public names and runner.inference (a finished
run's model applied to new images) only.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = [
    {"runner.config"},  # and the empty runner/__init__.py
    {"runner.dist"},
    {"runner.store"},
    {"runner.losses"},
    {"runner.data", "runner.spec"},
    {"runner.training"},
    {"runner.launch", "runner.inference"},
    {"runner.cli"},
    {"runner.train", "runner.grid", "runner.submit", "runner.tune", "runner.migrate", "runner.embed", "runner.status"},
]
ANALYSIS_MAY_IMPORT = {"runner.config", "runner.store", "runner.data", "runner.inference"}
"""Results, configs, the data package's public names, and a finished run's model for new images."""
LAZY_OK = ("ray", "umap", "tensorboard", "numba", "faiss", "openTSNE", "sklearn", "torchvision")
"""Heavy dependencies that are optional (ray, umap, ...) or that most commands never use (scikit-learn
for digits, LFW and k-means, ~2 s; torchvision for stream transforms and torchvision trunks, ~1 s): the
only imports allowed inside a function (with a comment)."""
LAZY_PROJECT_OK = {("runner.status", "runner.spec")}
"""(module, project import) allowed inside a function: runner.spec imports torch and PML (~2 s);
runner.status needs it only for a spec argument, and a results directory must answer in < 3 s."""


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("runner", "analysis"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = modules()


def imported(node: ast.AST, module: str) -> list[str]:
    """Project modules named by one import statement (relative imports resolved)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".")
            is_pkg = MODULES[module].name == "__init__.py"
            base = ".".join(pkg[:len(pkg) - node.level + is_pkg] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:  # `from runner.data import ImageSet` -> runner.data
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in ("runner", "analysis"):
            found.append(name)
    return sorted(set(found))


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = {m for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                       for m in imported(node, name) if m != name}
    return edges


def tier(module: str) -> tuple[int, str]:
    if module == "runner":
        return 0, module
    for i, group in enumerate(TIERS):
        for g in group:
            if module == g or module.startswith(g + "."):
                return i, g
    raise AssertionError(f"{module} is in no tier of tests/test_layers.py: add it")


def test_no_import_cycles():
    edges = graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_runner_imports_flow_down_the_tiers():
    bad = []
    for m, targets in graph().items():
        if not m.startswith("runner"):
            continue
        (t_m, g_m) = tier(m)
        for n in targets:
            if n.startswith("analysis"):
                bad.append(f"{m} -> {n} (runner never imports analysis)")
                continue
            t_n, g_n = tier(n)
            if g_n != g_m and t_n >= t_m:
                bad.append(f"{m} -> {n}")
    assert not bad, "imports against the layers: " + ", ".join(bad)


def test_analysis_reads_results_through_store_only():
    bad = [f"{m} -> {n}" for m, targets in graph().items() if m.startswith("analysis")
           for n in targets if n.startswith("runner") and n not in ANALYSIS_MAY_IMPORT]
    assert not bad, f"analysis may import only {', '.join(sorted(ANALYSIS_MAY_IMPORT))}: " + ", ".join(bad)


def test_function_level_imports_are_optional_heavy_dependencies_with_a_reason():
    """An import inside a function is an optional heavy dependency, and its first line (or the one above) says why."""
    bad = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
            for n in inner:
                mod = n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
                if not (mod == "torch.utils.tensorboard" or mod.split(".")[0] in LAZY_OK
                        or (name, mod) in LAZY_PROJECT_OK):
                    bad.append(f"{path.relative_to(ROOT)}:{n.lineno} {mod}")
            if inner and not any("#" in lines[k] for k in (inner[0].lineno - 1, inner[0].lineno - 2)):
                bad.append(f"{path.relative_to(ROOT)}:{inner[0].lineno} (no comment saying why)")
    assert not bad, "imports inside functions (only optional heavy dependencies, with a # comment): " + ", ".join(bad)


@pytest.mark.parametrize("pkg", ["runner", "analysis"])
def test_files_stay_short(pkg):
    """About 300 lines a file: a longer one says why in its first lines (a `# long:` note)."""
    long = [f"{p.relative_to(ROOT)} ({n})" for p in sorted((ROOT / pkg).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 320 and "# long:" not in p.read_text()[:2000]]
    assert not long, "files over 320 lines: " + ", ".join(long)


def test_the_walk_sees_known_edges():
    """The ast walk itself: edges that exist must be found (a walk that found nothing would pass the tests above)."""
    edges = graph()
    assert "runner.launch.run" in edges["runner.train"]
    assert "runner.store.run_file" in edges["runner.store"] and "runner.config" in edges["runner.store.files"]
    assert "runner.training.engine" in edges["runner.launch.run"]
