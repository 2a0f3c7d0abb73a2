"""Seeded synthetic arithmetic word problems with GSM8K-style worked answers.

Each problem has 1-3 add/subtract/multiply steps; the worked solution is one `a+b=c.` per
step followed by `#### N`, the format GSM8K uses (Cobbe et al., 2021). Short templates keep
the character-level default model fast while still needing multi-step reasoning.
"""

from __future__ import annotations

import random
from typing import Callable

from reftflow.data.records import Record

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Max", "Sam", "Tom", "Liz", "Kim"]
ITEMS = ["apples", "pens", "cards", "eggs", "coins", "books", "cups", "hats"]


def _step(rng: random.Random, value: int, max_operand: int) -> tuple[str, str, int]:
    """One operation on the running value: (question clause, worked step, new value)."""
    ops = ["add", "mul"] if value <= 1 else ["add", "sub", "mul"]
    if value * 2 > 999:
        ops.remove("mul")
    op = rng.choice(ops)
    if op == "add":
        b = rng.randint(1, max_operand)
        return f"They get {b} more.", f"{value}+{b}={value + b}.", value + b
    if op == "sub":
        b = rng.randint(1, value - 1)
        return f"They lose {b}.", f"{value}-{b}={value - b}.", value - b
    b = rng.randint(2, min(5, 999 // value))
    return f"They get {b} times as many.", f"{value}*{b}={value * b}.", value * b


def make_problem(rng: random.Random, idx: int, min_ops: int = 1, max_ops: int = 3, max_operand: int = 20) -> Record:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, max_operand)
    clauses, steps = [f"{name} has {value} {item}."], []
    for _ in range(rng.randint(min_ops, max_ops)):
        clause, step, value = _step(rng, value, max_operand)
        clauses.append(clause)
        steps.append(step)
    clauses.append(f"How many {item} now?")
    rid, question, reasoning = f"syn-{idx}", " ".join(clauses), " ".join(steps)
    return Record(id=rid, item={"id": rid, "question": question, "answer": str(value), "reasoning": reasoning},
                  completion=worked_completion(reasoning, str(value)))


def worked_completion(reasoning: str, answer: str) -> str:
    """What SFT imitates: the worked steps, then `#### N` (the numeric grader's gsm8k extraction)."""
    return f" {reasoning} #### {answer}"


def distinct(n: int, seed: int, make: Callable[[random.Random, int], Record | None], key: str, what: str
             ) -> list[Record]:
    """n records from `make(rng, index)` whose `item[key]` differ, identical for the same arguments (one
    private RNG, no global state); `make` may return None for a draw it rejects."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Record] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {what}")
        rec = make(rng, len(out))
        if rec is not None and rec.item[key] not in seen:
            seen.add(rec.item[key])
            out.append(rec)
    return out


def generate(n: int, seed: int, min_ops: int = 1, max_ops: int = 3, max_operand: int = 20) -> list[Record]:
    """n distinct problems, identical for the same arguments."""
    return distinct(n, seed, lambda rng, i: make_problem(rng, i, min_ops, max_ops, max_operand), "question",
                    f"problems with max_operand={max_operand}")
