"""`calculate_output` formulas for `multi` graders, parsed with a whitelist over Python's `ast`, never eval'd.

Grammar (OpenAI's multi grader formulas): numbers, sub-grader names, + - * /, unary minus, parentheses and
the functions min, max, abs, sqrt, log, exp, floor, ceil. Anything else (attributes, subscripts, other
calls, keywords, comparisons, `**`, strings) is refused when the grader is built. The parsed tree is
compiled into nested closures so each sample costs a few Python calls, not an AST walk.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Mapping

Env = Mapping[str, float]
Node = Callable[[Env], float]

# name: (callable, min args, max args)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int]] = {
    "min": (min, 2, 64),
    "max": (max, 2, 64),
    "abs": (abs, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
    "exp": (math.exp, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%"}
MAX_LENGTH = 2000


class FormulaError(ValueError):
    pass


class Formula:
    def __init__(self, source: str, names: set[str] | frozenset[str]) -> None:
        if not isinstance(source, str):
            raise FormulaError(f"formula must be a string, got {type(source).__name__}")
        if not source.strip():
            raise FormulaError("formula is empty")
        if len(source) > MAX_LENGTH:
            raise FormulaError(f"formula is longer than {MAX_LENGTH} characters")
        self.source = source
        self.names = frozenset(names)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            raise FormulaError(f"invalid syntax in formula {source!r} at column {e.offset}") from None
        except (ValueError, RecursionError, MemoryError):
            raise FormulaError(f"cannot parse formula {source!r}") from None
        self.used: set[str] = set()
        try:
            self._fn = self._compile(tree.body)
        except RecursionError:
            raise FormulaError(f"formula {source!r} is nested too deeply") from None

    def __call__(self, env: Env) -> float:
        return float(self._fn(env))

    def _compile(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FormulaError(f"only numbers are allowed as constants in formula, got {value!r}")
            number = float(value)
            return lambda env: number
        if isinstance(node, ast.Name):
            name = node.id
            if name in FUNCTIONS:
                raise FormulaError(f"'{name}' is a function in formula; call it as {name}(...)")
            if name not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise FormulaError(f"unknown name '{name}' in formula (sub-graders: {known})")
            self.used.add(name)
            return lambda env: env[name]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self._compile(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda env: -inner(env)
            return inner
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                symbol = _SYMBOL.get(type(node.op), type(node.op).__name__)
                raise FormulaError(f"operator '{symbol}' is not allowed in formula (allowed: + - * /)")
            left, right = self._compile(node.left), self._compile(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                what = ast.unparse(node.func)
                raise FormulaError(
                    f"call to '{what}' is not allowed in formula (functions: {', '.join(sorted(FUNCTIONS))})"
                )
            fname = node.func.id
            fn, lo, hi = FUNCTIONS[fname]
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise FormulaError(f"{fname}() takes plain arguments only in formula")
            if not lo <= len(node.args) <= hi:
                want = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 64 else f"at least {lo}"
                raise FormulaError(f"{fname}() takes {want} argument(s) in formula, got {len(node.args)}")
            args = [self._compile(a) for a in node.args]
            if len(args) == 1:
                (only,) = args
                return lambda env: fn(only(env))
            return lambda env: fn(*[a(env) for a in args])
        if isinstance(node, ast.Attribute):
            raise FormulaError(f"attribute access '{ast.unparse(node)}' is not allowed in formula")
        raise FormulaError(f"'{ast.unparse(node)}' is not allowed in formula (numbers, names, + - * /, functions)")
