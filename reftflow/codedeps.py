"""Which project files each stage runs, derived from the code: the import closure of its entry point.

A stage's modules are found from `tasks.<stage>` by following every import, including function-level
ones and the `"package.module:Class"` strings of registries (`reftflow.rl.ALGORITHMS`), transitively.
Package `__init__.py` files holding nothing but a docstring and constants cannot change what a stage
computes and are left out. The repo's dvc.yaml lists these files as deps (tests/test_dvc_deps.py
checks it); a project made by `reftflow init` depends on their digest instead (`reftflow.project`).
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

PACKAGES = ("reftflow", "tasks")
_REGISTRY_ENTRY = re.compile(r"^((?:reftflow|tasks)(?:\.\w+)+):\w+$")


def code_root() -> Path:
    """Where the `reftflow` and `tasks` packages live: the repo checkout, or site-packages."""
    import reftflow

    return Path(reftflow.__file__).resolve().parents[1]


def _module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every project module `path` imports (at any depth of its code), by dotted name."""
    parts = path.relative_to(root).with_suffix("").parts
    package = ".".join(parts[:-1]) if path.name != "__init__.py" else ".".join(path.parent.relative_to(root).parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _REGISTRY_ENTRY.match(node.value):
            found.add(_REGISTRY_ENTRY.match(node.value).group(1))
    return {m for m in found if m.split(".")[0] in PACKAGES}


def trivial(path: Path) -> bool:
    """An `__init__.py` with only a docstring and constants: nothing a stage computes depends on it."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
        or isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) for n in body)


def stage_files(stage: str, root: Path | None = None) -> list[Path]:
    """The project files `python -m tasks.<stage>` can execute, sorted, relative to `root`."""
    root = root or code_root()
    seen: set[Path] = set()
    todo = [f"tasks.{stage}"]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            file = _module_file(root, ".".join(parts[:i]))
            if file is not None and file not in seen:
                seen.add(file)
                todo.extend(imported_modules(root, file))
    return sorted(f.relative_to(root) for f in seen if not trivial(f))


def stage_digest(stage: str, root: Path | None = None) -> str:
    """One md5 over the stage's files (names and contents): it changes exactly when the stage's code does."""
    root = root or code_root()
    h = hashlib.md5()
    for rel in stage_files(stage, root):
        h.update(f"{rel}\n".encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()
