"""The `calculate_output` formula parser: precedence, functions, and what it refuses."""

from __future__ import annotations

import math

import pytest

from reftflow.graders.formula import Formula, FormulaError

ENV = {"a": 0.5, "b": 0.25, "c": 1.0}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("a + b * c", 0.5 + 0.25),  # * binds tighter than +
        ("(a + b) * c", 0.75),  # parentheses
        ("a - b - c", (0.5 - 0.25) - 1.0),  # left associative
        ("c / a / 2", (1.0 / 0.5) / 2),  # left associative division
        ("-a + c", 0.5),  # unary minus
        ("+a", 0.5),  # unary plus
        ("0.5 * a + 0.5 * b", 0.375),  # a weighted mean, OpenAI's common pattern
        ("min(a, b)", 0.25),
        ("max(a, b, c)", 1.0),  # min/max take several arguments
        ("abs(b - a)", 0.25),
        ("sqrt(b)", 0.5),
        ("log(c)", 0.0),
        ("log(8, 2)", 3.0),  # log with a base
        ("exp(a - a)", 1.0),
        ("floor(a + c)", 1.0),
        ("ceil(a)", 1.0),
        ("1e-1 * 10", 1.0),  # scientific notation
        ("min(1, max(0, a * 3))", 1.0),  # clamping idiom
    ],
)
def test_formula_values(source, expected):
    assert Formula(source, set(ENV))(ENV) == pytest.approx(expected)


@pytest.mark.parametrize(
    "source, message",
    [
        ("a.real", "attribute access"),  # attributes could reach dunder methods
        ("a.__class__", "attribute access"),
        ("__import__('os')", "call to '__import__' is not allowed"),  # calls outside the whitelist
        ("open('x')", "call to 'open'"),
        ("(lambda: 1)()", "call to"),  # calling anything but a whitelisted name
        ("a[0]", "not allowed"),  # subscripts
        ("a ** 2", "operator '**' is not allowed"),  # power: not in the grammar
        ("a // 2", "operator '//'"),
        ("a % 2", "operator '%'"),
        ("a if b else c", "not allowed"),  # conditional expressions
        ("a < b", "not allowed"),  # comparisons
        ("'text'", "only numbers"),  # strings
        ("True", "only numbers"),  # booleans are not numbers here
        ("d + a", "unknown name 'd'"),  # a name that is no sub-grader
        ("pi", "unknown name 'pi'"),
        ("sqrt", "is a function"),  # a function name used as a value
        ("sqrt(a, b)", "takes 1 argument"),
        ("min(a)", "at least 2"),
        ("max(*[a])", "plain arguments"),
        ("abs(x=a)", "plain arguments"),
        ("a +", "invalid syntax"),
        ("", "empty"),
        ("a; b", "invalid syntax"),  # statements
        ("[a, b]", "not allowed"),  # lists
        ("a" + " + a" * 1500, "longer than"),  # absurd length
        ("(" * 300 + "a" + ")" * 300, ""),  # deep nesting: refused one way or another, never a crash
    ],
)
def test_formula_refusals(source, message):
    with pytest.raises(FormulaError) as e:
        Formula(source, {"a", "b", "c"})
    assert message in str(e.value)


@pytest.mark.parametrize(
    "source, env, error",
    [
        ("a / b", {"a": 1.0, "b": 0.0}, ZeroDivisionError),  # division by zero surfaces per sample
        ("sqrt(a)", {"a": -1.0}, ValueError),  # math domain error
        ("log(a)", {"a": 0.0}, ValueError),
    ],
)
def test_formula_runtime_errors(source, env, error):
    with pytest.raises(error):
        Formula(source, set(env))(env)


def test_formula_records_used_names_and_returns_float():
    f = Formula("floor(a) + b", {"a", "b", "unused"})
    assert f.used == {"a", "b"}
    assert isinstance(f({"a": 1.5, "b": 0.0}), float) and not math.isnan(f({"a": 1.5, "b": 0.0}))
