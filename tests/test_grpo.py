"""GRPO through TRL: a 2-step smoke run on a tiny model (TRL's test_train habit: parameters must move)."""

from __future__ import annotations

import math

import torch

from reftflow.data.synthetic import generate
from reftflow.graders import build_grader
from reftflow.modeling import load_model
from reftflow.rl import COMMON_METRICS, RLRun
from reftflow.rl.grpo import GRPOAlgorithm, grpo_sizes
from tests.helpers import TINY, make_policy, rl_config

# dense, so a random-init model gets different rewards within a group (GRPO's advantage is 0 otherwise)
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{ sample.output_text }}",
         "reference": "{{ item.reasoning }}", "evaluation_metric": "fuzzy_match"}


def test_grpo_sizes_hold_whole_groups():
    sizes = grpo_sizes(rl_config("grpo", questions_per_step=16, samples_per_question=4, minibatch_size=30, epochs=2,
                                 steps=5))
    assert sizes["per_device_train_batch_size"] == 28  # a multiple of K
    assert sizes["optimizer_steps_per_rl_step"] == sizes["steps_per_generation"] * 2
    assert sizes["max_steps"] == 5 * sizes["optimizer_steps_per_rl_step"]


def test_grpo_two_steps_change_parameters(tmp_path):
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    before = {k: v.clone() for k, v in load_model(policy)[0].state_dict().items()}
    cfg = rl_config("grpo", steps=2, questions_per_step=4, samples_per_question=2, max_new_tokens=8, minibatch_size=4,
                    lr=1e-2)
    algo = GRPOAlgorithm(RLRun(policy, generate(16, seed=1), cfg, build_grader(FUZZY), tmp_path / "grpo", 0, TINY))
    metrics = list(algo.train())
    algo.save()

    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in (*COMMON_METRICS, "rl/kl", "grpo/loss"):
            assert math.isfinite(m[key]), (key, m[key])
    after = load_model(tmp_path / "grpo")[0].state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed after 2 GRPO steps"


def test_grpo_stops_at_the_step_the_caller_stops_at(tmp_path):
    """train() is a real generator: TRL's loop waits at each RL-step boundary for the next `next()`."""
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    cfg = rl_config("grpo", steps=50, questions_per_step=4, samples_per_question=2, max_new_tokens=8, minibatch_size=4)
    algo = GRPOAlgorithm(RLRun(policy, generate(16, seed=1), cfg, build_grader(FUZZY), tmp_path / "grpo", 0, TINY))
    for m in algo.train():
        break
    assert m["step"] == 1
    assert algo.trainer.state.global_step == grpo_sizes(cfg)["optimizer_steps_per_rl_step"]
    algo.save()
    assert (tmp_path / "grpo" / "config.json").exists()
