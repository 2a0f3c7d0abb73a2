"""What keeps the library readable, checked: no function in reftflow/ over 60 lines unless its docstring
says why it is one long function on purpose (the sandbox worker keeps its protocol in locals, out of
reach of grader code)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60


def test_no_long_function_without_its_reason():
    long = []
    for path in sorted((ROOT / "reftflow").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                reason = "long function on purpose" in (ast.get_docstring(node) or "").lower()
                if lines > LIMIT and not reason:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
