"""dvc.yaml's deps cannot drift from the code: each stage lists every project module it imports.

A stage's modules are derived from its entry point (`python -m tasks.<stage>`), following every
import, including function-level ones and the `"package.module:Class"` strings of registries
(`reftflow.rl.ALGORITHMS`), transitively. A module counts as covered when dvc.yaml lists it or a
directory above it. Package `__init__.py` files holding nothing but a docstring or a version string
cannot change what a stage computes and are not required.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("reftflow", "tasks")
_REGISTRY_ENTRY = re.compile(r"^((?:reftflow|tasks)(?:\.\w+)+):\w+$")


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(path: Path) -> set[str]:
    """Every project module `path` imports (at any depth of its code), by dotted name."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1]) if path.name != "__init__.py" \
        else ".".join(path.parent.relative_to(ROOT).parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _REGISTRY_ENTRY.match(node.value):
            found.add(_REGISTRY_ENTRY.match(node.value).group(1))
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES}


def stage_files(entry: str) -> set[Path]:
    """The project files `python -m <entry>` can execute: the import closure, packages included."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            file = module_file(".".join(parts[:i]))
            if file is not None and file not in seen:
                seen.add(file)
                todo.extend(imported_modules(file))
    return seen


def trivial(path: Path) -> bool:
    """An `__init__.py` with only a docstring and constants: nothing a stage computes depends on it."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        or isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) for n in body)


def covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_imported_module(stage):
    spec = STAGES[stage]
    entry = spec["cmd"].removeprefix("python -m ").split()[0]
    missing = sorted(str(f.relative_to(ROOT)) for f in stage_files(entry)
                     if not trivial(f) and not covered(f, spec["deps"]))
    assert not missing, f"dvc.yaml stage '{stage}' does not list {missing}"


def test_the_derivation_sees_function_level_imports_and_registries():
    """The analysis itself: ppo reaches the trainers only through the registry's strings and lazy imports."""
    files = {str(f.relative_to(ROOT)) for f in stage_files("tasks.ppo")}
    assert {"reftflow/ppo/trainer.py", "reftflow/grpo.py", "reftflow/raft.py", "reftflow/generation.py"} <= files
    assert "reftflow/gate.py" not in files
