"""The shape of the ipo package: layers that only point down, no import cycle, argparse only in the
command-line layer, ipo imports at the top of files, small modules, nothing that points outside the repo.

The layers (lowest first; each may import its own and lower layers only):
    0 plumbing      ipo/__init__.py and the top-level modules (runs, data, prompts, modeling, report, hub, assets)
                    run_info (metrics.json's "run" object), paper (the paper's published numbers)
                    slurm (SLURM array scripts), grid (judge grids of models x judges x benchmarks)
                    parallel (several processes: sharded scoring and sampling, one writer per run folder)
    1 judges        ipo/judges/
    2 benchmarks    ipo/benchmarks/      2 training  ipo/training/   (siblings: neither imports the other)
    3 selfimprove   ipo/selfimprove/
    4 cli           ipo/cli/
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import REPO

IPO = REPO / "ipo"
LAYERS = {"judges": 1, "benchmarks": 2, "training": 2, "selfimprove": 3, "cli": 4}
MAX_MODULE_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(IPO.rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, package) of an ipo module; plumbing is rank 0."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    return 0, "plumbing"


def resolve(module: str) -> str | None:
    """The ipo module an import names (``from ipo.judges import yes_no`` names ipo.judges.yes_no)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def ipo_imports(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported ipo module, node, inside a function) for every import of ipo in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            for name in names:
                if name == "ipo" or name.startswith("ipo."):
                    target = resolve(name)
                    if target:
                        found.append((target, child, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_layers_only_point_down():
    wrong = []
    for name, path in MODULES.items():
        rank, package = layer_of(name)
        for target, node, _ in ipo_imports(path):
            target_rank, target_package = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_package != package):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = {name: {t for t, _, _ in ipo_imports(path) if t != name} for name, path in MODULES.items()}
    # A package's __init__ is imported on the way to its modules; it holds only a docstring, so it has no edges.
    state: dict[str, int] = {}

    def cycle_from(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
            if not state.get(nxt):
                found = cycle_from(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in graph:
        if not state.get(start):
            found = cycle_from(start, [start])
            assert found is None, "import cycle: " + " -> ".join(found)


def test_ipo_imports_sit_at_the_top_of_files():
    lazy = [
        f"{path.relative_to(REPO)}:{node.lineno} imports {target} inside a function"
        for name, path in MODULES.items()
        for target, node, in_function in ipo_imports(path)
        if in_function
    ]
    assert not lazy, "\n".join(lazy)


def test_argparse_and_namespaces_only_in_the_command_line_layer():
    wrong = []
    for name, path in MODULES.items():
        if layer_of(name)[1] == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports argparse")
            if isinstance(node, ast.ImportFrom) and node.module == "argparse":
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports from argparse")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(p.arg in ("args", "namespace", "parser") for p in params):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}() takes parsed arguments")
    assert not wrong, "\n".join(wrong)


def test_package_inits_hold_only_a_docstring():
    # ipo/__init__.py holds IpoError and ipo/cli/__init__.py the helpers every script shares (ArgumentParser,
    # run, the common flag groups); the other packages' names are imported from the module that defines them.
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name not in ("ipo", "ipo.cli"):
            tree = ast.parse(path.read_text())
            assert ast.get_docstring(tree), f"{name} has no docstring"
            assert len(tree.body) == 1, f"{name}/__init__.py should hold only its docstring (no re-exports)"


def test_no_core_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


# Pointers to documents that are not in the repository (the project's private background notes).
OUTSIDE_DOCS = re.compile(
    "|".join(["shared/" + "spec", r"spec/[a-z_]+\.md", "ipo_" + "upstream", r"performance\.md", "spec " + "§"])
)


def test_nothing_points_at_documents_outside_the_repository():
    suffixes = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".sh", ".cfg"}
    skip = {".venv", ".git", "outputs", "__pycache__", ".pytest_cache"}
    hits = []
    for path in REPO.rglob("*"):
        if path.is_file() and path.suffix in suffixes and not skip.intersection(path.relative_to(REPO).parts):
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OUTSIDE_DOCS.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
