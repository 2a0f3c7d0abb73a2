"""Guards: NaN/inf in reward or loss raises TrainingDiverged before anything reaches out_dir."""

import math

import pytest
import torch

from reftflow.data.synthetic import generate
from reftflow.rl import RLRun
from reftflow.rl.ppo import trainer as trainer_mod
from reftflow.rl.ppo.trainer import PPOTrainer, TrainingDiverged
from tests.helpers import DIGITS, TINY, FunctionGrader, make_policy, rl_config

CFG = rl_config("ppo", steps=3, questions_per_step=2, samples_per_question=2, max_new_tokens=8, checkpoint_every=1,
                minibatch_size=4)


@pytest.fixture()
def sft(tmp_path):
    torch.set_num_threads(1)
    return make_policy(tmp_path / "sft")


def test_nan_reward_raises_and_saves_nothing(sft, tmp_path):
    def nan_grader(texts, items):
        return [math.nan] + [0.5] * (len(texts) - 1)

    trainer = PPOTrainer(RLRun(sft, generate(8, seed=0), CFG, FunctionGrader(nan_grader), tmp_path / "ppo", 0, TINY,
                               tmp_path / "ck"))
    with pytest.raises(TrainingDiverged, match=r"step 1: non-finite reward") as err:
        list(trainer.train())
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert not (tmp_path / "ppo").exists()


def test_inf_loss_at_a_later_step_raises_and_saves_nothing(sft, tmp_path, monkeypatch):
    real = trainer_mod.policy_loss
    calls = {"n": 0}

    def loss_that_blows_up(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss + math.inf if calls["n"] > 2 else loss), stats  # step 2's first update

    monkeypatch.setattr(trainer_mod, "policy_loss", loss_that_blows_up)
    trainer = PPOTrainer(RLRun(sft, generate(8, seed=0), CFG, DIGITS, tmp_path / "ppo", 0, TINY, tmp_path / "ck"))
    seen = []
    with pytest.raises(TrainingDiverged, match=r"step 2: non-finite (loss|gradient norm)"):
        for m in trainer.train():
            seen.append(m["step"])
    assert seen == [1]
    assert not (tmp_path / "ppo").exists()
