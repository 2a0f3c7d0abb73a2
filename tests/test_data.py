"""Synthetic generator, splits and answer extraction (the file formats: tests/test_formats.py)."""

import json

import pytest

from reftflow.answers import extract_answer, parse_number
from reftflow.config import DataConfig
from reftflow.data.prepare import build_splits
from reftflow.data.records import DataError
from reftflow.data.synthetic import generate


def _check_worked_solution(rec):
    """Replay the `a+b=c.` steps: each is correct and chains into the next, ending in the answer."""
    value = None
    for step in rec.item["reasoning"].split(". "):
        lhs, rhs = step.rstrip(".").split("=")
        a, op, b = next((lhs.partition(o) for o in "+-*" if o in lhs))
        assert value is None or int(a) == value
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert value == int(rhs)
    assert str(value) == rec.item["answer"]
    assert rec.completion == f" {rec.item['reasoning']} #### {value}"  # what SFT imitates


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = generate(50, seed=1), generate(50, seed=1), generate(50, seed=2)
    assert a == b
    assert a != c


def test_generator_problems_are_correct_distinct_and_in_range():
    recs = generate(300, seed=0, min_ops=1, max_ops=3)
    assert len({r.item["question"] for r in recs}) == 300
    for r in recs:
        _check_worked_solution(r)
        n_ops = r.item["reasoning"].count("=")
        assert 1 <= n_ops <= 3
        assert int(r.item["answer"]) >= 0


@pytest.mark.parametrize(
    "text, method, expected",
    [
        ("3+4=7. #### 7", "gsm8k", "7"),  # the standard form
        ("#### 1,234", "gsm8k", "1,234"),  # thousands separator kept as written
        ("#### -5", "gsm8k", "-5"),  # negative
        ("#### 3 then #### 9", "gsm8k", "9"),  # last marker wins
        ("the answer is 7", "gsm8k", None),  # no marker: nothing extractable
        ("####", "gsm8k", None),  # marker without a number
        ("I had 3 then 12.5 left", "last_number", "12.5"),  # flexible mode
        (r"so \boxed{42}", "boxed", "42"),  # LaTeX boxed
        ("#### $1,000.50", "gsm8k", "$1,000.50"),  # currency
    ],
)
def test_extract_answer(text, method, expected):
    assert extract_answer(text, method) == expected


@pytest.mark.parametrize("raw, value", [("1,234", 1234.0), ("$5", 5.0), ("2.50", 2.5), ("7.", 7.0), ("abc", None)])
def test_parse_number(raw, value):
    assert parse_number(raw) == value


def test_default_tolerance_matches_float_noise_only():
    from reftflow.graders.numeric import Tolerance

    assert Tolerance().match(7.0, 7.0000000001)
    assert not Tolerance().match(7.0, 7.1)


def test_splits_are_seeded_disjoint_and_honour_worked_fraction():
    cfg = DataConfig(num_train=200, num_val=50, worked_fraction=0.25)
    train, val, report = build_splits(cfg, seed=3)
    train2, val2, _ = build_splits(cfg, seed=3)
    assert (train, val) == (train2, val2)
    assert not {r.item["question"] for r in train} & {r.item["question"] for r in val}
    assert report["train_worked"] == 50 and report["train_answer_only"] == 150
    answer_only = [r for r in train if r.completion is None]
    assert all(r.item["reasoning"] is None for r in answer_only)  # graders cannot see a dropped solution either
    assert all(r.completion for r in val)  # val keeps references for inspection
    assert all(r.prompt == f"Q: {r.item['question']}\nA:" for r in train + val)  # data.prompt_template


def test_prompt_template_over_item_fields_and_a_missing_field(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"{i}+0={i}. #### {i}", "topic": {"name": "sums"}} for i in range(6)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source="file", path=str(tmp_path / "t.jsonl"), num_val=2,
                     prompt_template="[{{ item.topic.name }}] {{ item.question }}\n")
    train, val, _ = build_splits(cfg, seed=0)
    assert {r.prompt for r in train + val} == {f"[sums] q{i}?\n" for i in range(6)}
    assert all(r.completion for r in train)  # real data keeps every worked solution (worked_fraction is synthetic-only)
    bad = cfg.model_copy(update={"prompt_template": "{{ item.title }}"})
    with pytest.raises(DataError, match=r"data.prompt_template: item 'train-1': .*item has no field 'title'"):
        build_splits(bad, seed=0)


def test_leaking_val_questions_are_dropped_from_train(tmp_path):
    rows = [{"question": f"q{i}?", "answer": f"#### {i}"} for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    cfg = DataConfig(source="jsonl", path=str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"),
                     num_val=3)
    train, val, report = build_splits(cfg, seed=0)
    assert report["leaked_dropped"] == 3 and len(train) == 7 and len(val) == 3
