"""Every RL algorithm through the one protocol (`reftflow.rl`): same construction, same common metrics,
`train()` yields per step, `save()` writes a loadable model that moved, `stop_reason` exists."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from reftflow.config import LoRAConfig, RLConfig
from reftflow.data.synthetic import generate
from reftflow.modeling import load_model
from reftflow.rl import ALGORITHMS, COMMON_METRICS, RLRun, build_algorithm
from tests.helpers import TINY, FunctionGrader, make_policy, rl_config

# full marks for any answer with a digit in it: an untrained char model earns it on some samples, not all
HAS_DIGIT = FunctionGrader(lambda texts, items: [float(any(c.isdigit() for c in t)) for t in texts], "has_digit")


def test_the_registry_is_what_the_config_accepts():
    assert set(ALGORITHMS) == set(typing.get_args(RLConfig.model_fields["algorithm"].annotation))
    assert all(name in RLConfig.model_fields for name in ALGORITHMS)  # each has its own section
    with pytest.raises(ValueError, match="unknown RL algorithm 'dpo'"):
        build_algorithm(RLRun("x", [], RLConfig.model_construct(algorithm="dpo"), HAS_DIGIT, "y", 0))


@pytest.mark.parametrize("lora", [None, LoRAConfig(r=4, alpha=8)], ids=["full", "lora"])
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_trains_through_the_protocol(name, lora, tmp_path):
    """Full fine-tuning, and LoRA adapters (reftflow/lora.py) saved as a merged, plain model."""
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    before = {k: v.clone() for k, v in load_model(policy)[0].state_dict().items()}
    cfg = rl_config(name, steps=2, questions_per_step=4, samples_per_question=4, max_new_tokens=8, minibatch_size=8,
                    lr=1e-2)
    algo = build_algorithm(RLRun(policy, generate(16, seed=1), cfg, HAS_DIGIT, tmp_path / "out", 0,
                                 TINY.model_copy(update={"lora": lora, "torch_threads": 1}), tmp_path / "ck"))
    assert algo.step == 0
    if name == "ppo":
        assert (algo.ref is None) == (lora is not None)  # LoRA: the reference is the adapters disabled, no copy
    history = list(algo.train())
    assert algo.stop_reason is None and not (tmp_path / "out").exists()
    assert algo.lm.config.model_type == "llama" and algo.tokenizer.eos_token == "<eos>"
    algo.save()
    assert [m["step"] for m in history] == [1, 2]
    for m in history:
        for key in COMMON_METRICS:
            assert math.isfinite(m[key]), (name, key, m.get(key))
        assert 0.0 < m["rl/accuracy"] < 1.0  # mixed outcomes: the updates had something to learn from
    assert not (tmp_path / "out" / "adapter_config.json").exists()  # a plain model (LoRA: merged)
    after = load_model(tmp_path / "out")[0].state_dict()
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before), f"{name}: no parameter changed"


def test_raft_keeps_distinct_full_marks_only():
    from reftflow.rl.raft import accepted_rows

    texts = ["a", "a", "b", "c", "d", "e", "f", "g"]
    scores = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 1.0])
    assert accepted_rows(texts, scores, group_size=4, max_per_question=2) == [0, 2, 7]
    assert accepted_rows(texts, scores, group_size=4, max_per_question=1) == [0, 7]


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_algorithm_resumes_from_its_checkpoint(name, tmp_path):
    """Stopped after step 2, the algorithm resumes from `checkpoint_dir` (`step` says where) and ends as an
    uninterrupted run does. Ours write a step's checkpoint when the loop goes on to the next, so they redo
    step 2; GRPO's is TRL's own, written right after the step (with TRL's RNG and data order), so it
    goes on at step 3."""
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    cfg = rl_config(name, steps=3, questions_per_step=4, samples_per_question=4, max_new_tokens=8, checkpoint_every=1,
                    minibatch_size=8, lr=1e-2)
    records = generate(16, seed=1)
    model = TINY.model_copy(update={"torch_threads": 1})

    def run(out, stop_after=None):
        algo = build_algorithm(RLRun(policy, records, cfg, HAS_DIGIT, out, 0, model, tmp_path / f"ck-{out.name}"))
        start, steps = algo.step, []
        for m in algo.train():
            steps.append({k: v for k, v in m.items() if "time" not in k and k != "rl/episodes_per_s"})
            if stop_after and len(steps) == stop_after:
                return start, steps
        algo.save()
        return start, steps

    started_at, full = run(tmp_path / "full")
    assert started_at == 0
    assert run(tmp_path / "cut", stop_after=2) == (0, full[:2])
    resumed_at, rest = run(tmp_path / "cut")
    assert resumed_at == (2 if name == "grpo" else 1)
    assert rest == full[resumed_at:]
    a, b = (load_model(tmp_path / d)[0].state_dict() for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
