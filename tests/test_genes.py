"""The `genes` synthetic task (reftflow/data/genes.py) and its example (reftflow/examples/genes)."""

from pathlib import Path

import pytest

from reftflow.config import ConfigError, DataConfig, load_params, parse_params
from reftflow.data import genes
from reftflow.data.prepare import build_splits
from reftflow.data.records import common_fields
from reftflow.graders import build_grader

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "reftflow" / "examples" / "genes" / "params.yaml"


@pytest.fixture(scope="module")
def params():
    return load_params(EXAMPLE)


@pytest.fixture(scope="module")
def splits(params):
    return build_splits(params.data, params.seed)


def test_world_is_fixed_and_well_formed():
    w = genes.world()
    assert w == genes.world(genes.WORLD_SEED) and len(w) == genes.NUM_GENES
    symbols = [g for g, _ in w]
    assert len(set(symbols)) == len(symbols)
    assert all(g[0].isupper() and g[-1].isdigit() and g.isalnum() for g in symbols)
    profiles = [set(p) for _, p in w]
    assert all(len(p) == genes.PROFILE_SIZE and p <= set(genes.SYMPTOMS) for p in profiles)
    assert set().union(*profiles) == set(genes.SYMPTOMS)  # every symptom belongs to some gene
    shared = [len(a & b) for i, a in enumerate(profiles) for b in profiles[i + 1 :]]
    assert max(shared) <= genes.MAX_SHARED and sum(s > 0 for s in shared) >= 40  # overlap, never copies


def test_generator_is_deterministic_and_seed_dependent():
    a, b, c = genes.generate(100, seed=1), genes.generate(100, seed=1), genes.generate(100, seed=2)
    assert a == b
    assert a != c


def test_cases_are_well_formed():
    w = dict(genes.world())
    recs = genes.generate(500, seed=0)
    assert len({r.item["case"] for r in recs}) == 500
    assert len({r.item["gene"] for r in recs}) == genes.NUM_GENES  # every gene is asked about
    for r in recs:
        item = r.item
        assert set(item) == {"id", "case", "symptoms_present", "symptoms_absent", "instruction", "gene"}
        assert item["id"] == r.id and item["instruction"] == genes.INSTRUCTION
        profile, present, absent = set(w[item["gene"]]), item["symptoms_present"], item["symptoms_absent"]
        assert len(set(present) & profile) >= 3 and not set(absent) & profile and not set(absent) & set(present)
        assert 1 <= len(absent) <= 2
        assert item["case"] == ", ".join(present + [f"-{s}" for s in absent])
        ranked = [g.strip() for g in r.completion.split(genes.SEPARATOR)]
        assert len(ranked) == 3 == len(set(ranked)) and ranked[0] == item["gene"]
        assert all(g in w and set(w[g]) & set(present) for g in ranked[1:])  # distractors share symptoms


def test_example_splits_prompts_and_lengths(params, splits):
    from reftflow.modeling import build_char_tokenizer
    from reftflow.prompting import render_prompt

    train, val, report = splits
    assert params.data.task == "genes" and report["val_items"] == params.data.num_val
    assert report["train_worked"] == round(params.data.worked_fraction * report["train_items"])
    answer_only = [r for r in train if not r.completion]
    assert answer_only and all("reasoning" not in r.item for r in train)  # no arithmetic field leaks in
    assert train[0].prompt == f"Case: {train[0].item['case']}\n{genes.INSTRUCTION}\nGenes:"
    tok = build_char_tokenizer()
    longest = 0
    for r in train + val:
        prompt = render_prompt(r, tok)
        assert len(prompt) <= 150
        completion = r.completion or genes.worked_completion([r.item["gene"]] * 3)
        longest = max(longest, len(tok(prompt + completion)["input_ids"]) + 1)  # + EOS
    assert longest <= params.model.max_length
    assert params.rl.max_new_tokens >= max(len(r.completion) for r in train if r.completion) + 1


def test_reference_scores_full_marks_and_distractor_first_0_7(params, splits):
    train, val, _ = splits
    worked = [r for r in train if r.completion]
    with build_grader(params.grader, item_fields=common_fields(train + val)) as grader:
        refs = grader.grade_many([r.completion for r in worked], [r.item for r in worked])
        assert all(res.score == 1.0 and res.error is None for res in refs)
        swapped = []
        for r in worked:
            first, second, third = r.completion.split(genes.SEPARATOR)
            swapped.append(genes.SEPARATOR.join([second, first, third]))
        assert {res.score for res in grader.grade_many(swapped, [r.item for r in worked])} == {0.7}
        assert grader.grade(" ", worked[0].item).score == 0.0


def test_task_needs_the_synthetic_source():
    assert DataConfig().task == "arithmetic"
    with pytest.raises(ConfigError, match="data.source"):
        parse_params({"data": {"source": "file", "path": "x.jsonl", "task": "genes"}})
