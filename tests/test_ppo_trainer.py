"""A tiny-model PPO run end to end: parameters change, metrics are finite, the output loads; KL bound."""

import math

import pytest
import torch

from reftflow.data.synthetic import generate
from reftflow.rl import COMMON_METRICS, RLRun
from reftflow.rl.ppo.trainer import PPOTrainer
from reftflow.rl.ppo.value_head import VALUE_HEAD_FILE, PolicyWithValue
from tests.helpers import DIGITS, TINY, make_policy, rl_config

REQUIRED = ["step", *COMMON_METRICS, "rl/kl", "ppo/value_loss", "ppo/policy_loss", "ppo/clipfrac", "rl/entropy",
            "ppo/approx_kl", "value/clipfrac", "time/generate_s", "time/forward_s", "time/update_s", "time/other_s"]


def _trainer(sft, out, **kw) -> PPOTrainer:
    base = dict(steps=3, questions_per_step=4, samples_per_question=2, minibatch_size=4, max_new_tokens=12, lr=1e-3)
    cfg = rl_config("ppo", **{**base, **kw})
    return PPOTrainer(RLRun(sft, generate(16, seed=0), cfg, DIGITS, out, 0, TINY.model_copy(update={"torch_threads": 1})))


@pytest.fixture()
def sft(tmp_path):
    torch.set_num_threads(1)
    return make_policy(tmp_path / "sft")


def test_ppo_smoke_changes_parameters_and_saves(sft, tmp_path):
    before = {k: v.clone() for k, v in PolicyWithValue.from_pretrained(sft)[0].state_dict().items()}
    trainer = _trainer(sft, tmp_path / "ppo")
    history = list(trainer.train())
    assert not (tmp_path / "ppo").exists()  # saving is the caller's explicit step
    trainer.save()
    assert [m["step"] for m in history] == [1, 2, 3] and trainer.stop_reason is None
    for m in history:
        missing = [k for k in REQUIRED if k not in m]
        assert not missing, missing
        assert all(math.isfinite(v) for v in m.values()), m
        parts = m["time/generate_s"] + m["time/forward_s"] + m["time/update_s"] + m["time/other_s"]
        assert parts == pytest.approx(m["time/step_s"])
        assert 0.0 <= m["rl/accuracy"] <= 1.0 and m["rl/episodes"] == 8 and m["rl/grader_error_rate"] == 0.0
    assert history[-1]["rl/kl"] != 0.0  # the policy moved away from the reference
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "ppo")  # a normal HF dir
    assert (tmp_path / "ppo" / VALUE_HEAD_FILE).exists() and (tmp_path / "ppo" / "tokenizer.json").exists()
    after, _ = PolicyWithValue.from_pretrained(tmp_path / "ppo")
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before[k])]
    assert "value_head.weight" in changed
    unchanged = [k for k in before if k not in changed]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_kl_bound_stops_early_and_still_saves(sft, tmp_path):
    trainer = _trainer(sft, tmp_path / "ppo", steps=6, lr=5e-3, max_kl=1e-6, kl_estimator="k3")
    history = list(trainer.train())
    trainer.save()
    assert trainer.stop_reason is not None and trainer.stop_reason.startswith("kl_bound")
    assert "max_kl" in trainer.stop_reason and f"step {history[-1]['step']}" in trainer.stop_reason
    assert len(history) < 6 and history[-1]["rl/kl"] > 1e-6
    assert (tmp_path / "ppo" / "config.json").exists()


def test_step_questions_cover_the_data_before_repeating():
    from reftflow.rl.schedule import QuestionSchedule

    questions = QuestionSchedule(4, 2, seed=0)
    epoch0 = questions(1) + questions(2)
    epoch1 = questions(3) + questions(4)
    assert sorted(epoch0) == sorted(epoch1) == [0, 1, 2, 3] and epoch0 != epoch1  # reshuffled each pass
    halves = [QuestionSchedule(4, 2, seed=0, rank=r, world_size=2)(1) for r in (0, 1)]
    assert halves == [questions(1)[0::2], questions(1)[1::2]]  # each process its share of the same questions


@pytest.mark.parametrize("estimator", ["group_zscore", "leave_one_out"])
def test_critic_free_estimators_train_the_policy_and_leave_the_value_head(sft, tmp_path, estimator):
    """advantage_estimator group_zscore/leave_one_out: the same PPO update with a group baseline, no value loss."""
    before = {k: v.clone() for k, v in PolicyWithValue.from_pretrained(sft)[0].state_dict().items()}
    trainer = _trainer(sft, tmp_path / "ppo", advantage_estimator=estimator, whiten_advantages=False,
                       negative_advantage_scale=0.5)
    history = list(trainer.train())
    trainer.save()
    assert len(history) == 3 and all(math.isfinite(v) for m in history for v in m.values())
    assert all(m["ppo/value_loss"] == 0.0 for m in history)
    after, _ = PolicyWithValue.from_pretrained(tmp_path / "ppo")
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert "value_head.weight" not in changed and len(changed) == len(before) - 2  # all but the value head


def test_critic_options_warm_up_the_value_head_alone_then_train_with_the_own_answers_term(sft, tmp_path):
    """value_init mean_reward: the head's bias is the first step's mean reward; critic_warmup_steps: the
    first step moves only the value head; value_lr: the head has its own lr; sft_coef: the own-answers
    term is logged (and finite)."""
    trainer = _trainer(sft, tmp_path / "ppo", steps=2, value_init="mean_reward", critic_warmup_steps=1,
                       value_lr=1e-2, sft_coef=0.5)
    policy_before = {k: v.clone() for k, v in trainer.lm.state_dict().items()}
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 1e-2]
    it = trainer.train()
    first = next(it)
    # the mean reward, then two Adam updates of at most ~lr each
    assert trainer.policy.value_head.bias.item() == pytest.approx(first["train_reward_mean"], abs=0.03)
    assert first["train_reward_mean"] > 0.05
    assert all(torch.equal(v, policy_before[k]) for k, v in trainer.lm.state_dict().items())  # policy untouched
    second = next(it)
    assert any(not torch.equal(v, policy_before[k]) for k, v in trainer.lm.state_dict().items())
    assert math.isfinite(second["ppo/sft_nll"]) and 0.0 <= first["rl/mixed_questions"] <= 1.0


def test_filter_groups_updates_only_on_questions_with_a_signal(sft, tmp_path):
    """leave_one_out gives a question whose samples all score alike advantage 0: with filter_groups the
    update skips it (and every question carries a signal for the own-answers term only if it has full marks)."""
    def one_question_varies(texts, items):
        return [float(i % 4 == 0) if i < 4 else 0.5 for i in range(len(texts))]  # question 0 mixed, the rest flat

    from reftflow.rl import RLRun
    from tests.helpers import FunctionGrader

    cfg = rl_config("ppo", steps=1, questions_per_step=4, samples_per_question=4, max_new_tokens=8, minibatch_size=16,
                    advantage_estimator="leave_one_out", whiten_advantages=False, filter_groups=True, kl_coef=0.0)
    trainer = PPOTrainer(RLRun(sft, generate(16, seed=0), cfg, FunctionGrader(one_question_varies), tmp_path / "ppo",
                               0, TINY.model_copy(update={"torch_threads": 1})))
    (m,) = list(trainer.train())
    assert m["ppo/questions_updated"] == 1.0 and m["rl/kl"] == 0.0 and m["time/forward_s"] < 0.05
