"""Which project modules import which: for the dvc.yaml deps and import-cycle tests."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cxr", "stages")


def module_file(module: str) -> Path | None:
    """The file of a project module (`cxr.core.params`), or None for anything else."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def direct_imports(module: str) -> set[str]:
    """Project modules that `module` imports anywhere in its file (lazy imports too)."""
    path = module_file(module)
    assert path is not None, f"{module} is not a project module"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from cxr.models import layer_names` imports a module, not a name
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name) is not None and name != module}


def with_packages(module: str) -> set[str]:
    """The module and every package above it, whose __init__ runs when it is imported."""
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts) + 1)}


def imported_modules(module: str) -> set[str]:
    """Every project module importing `module` runs: itself, its imports, their packages."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        for loaded in with_packages(name) - seen:
            seen.add(loaded)
            pending.extend(direct_imports(loaded))
    return seen


def imported_files(module: str) -> set[str]:
    """The repository-relative files of imported_modules(module), as dvc.yaml names them."""
    return {
        module_file(name).relative_to(ROOT).as_posix()  # type: ignore[union-attr]
        for name in imported_modules(module)
    }


def imported_folders(module: str) -> set[str]:
    """imported_files(module) as dvc.yaml lists them: each cxr/<package>/ file as its folder."""
    return {
        "/".join(path.split("/")[:2]) if path.startswith("cxr/") and path.count("/") >= 2 else path
        for path in imported_files(module)
    }


def package_of(module: str) -> str:
    """The library package a cxr module belongs to (`cxr.models.loading` -> `models`)."""
    return module.split(".")[1]


def all_modules() -> list[str]:
    """Every module of the cxr package and the stages, by dotted name."""
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def import_cycles() -> list[list[str]]:
    """Cycles in the import graph of the project's modules (package __init__ edges excluded)."""
    graph = {module: direct_imports(module) for module in all_modules()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module)
    return cycles
