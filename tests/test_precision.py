"""`model.bf16: auto` asks the hardware: bf16 autocast only where it is native (reftflow/precision.py)."""

from __future__ import annotations

import pytest
import torch

from reftflow import precision
from reftflow.config import ModelConfig
from reftflow.modeling import device_and_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("caps, native", [
    ({"avx2": True, "avx512_bf16": False, "amx_bf16": False}, False),  # the AVX2 EPYC of the issue
    ({"avx2": True, "avx512_bf16": True, "amx_bf16": False}, True),
    ({"avx2": True, "avx512_bf16": False, "amx_bf16": True}, True),  # Sapphire Rapids' AMX
])
def test_auto_picks_float32_without_native_bf16_and_bf16_with_it(monkeypatch, caps, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert precision.native_bf16(CPU) is native
    assert precision.use_bf16("auto", CPU) is native
    assert device_and_precision(ModelConfig(device="cpu"))[1] is native  # what every stage asks
    assert precision.use_bf16(False, CPU) is False


def test_true_on_a_cpu_without_it_runs_and_says_once_that_it_will_be_slow(monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    monkeypatch.setattr(precision, "_warned", set())
    assert precision.use_bf16(True, CPU) and precision.use_bf16(True, CPU)
    lines = [line for line in capsys.readouterr().err.splitlines() if "model.bf16" in line]
    assert len(lines) == 1 and "no native bf16" in lines[0] and "slower than float32" in lines[0]


def test_autocast_is_bf16_only_when_asked():
    layer = torch.nn.Linear(4, 4)
    with precision.autocast(CPU, True):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with precision.autocast(CPU, False):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    assert precision.name(True) == "bf16" and precision.name(False) == "float32"


@pytest.mark.parametrize("native", [False, True])
def test_trl_s_trainers_follow_the_same_rule(monkeypatch, tmp_path, native):
    """SFT and GRPO run in TRL, whose own default is bf16 on the CPU too: they get the rule's answer."""
    from reftflow.config import RLConfig, SFTConfig
    from reftflow.rl import RLRun
    from reftflow.rl.grpo import _trl_config as grpo_config, grpo_sizes
    from reftflow.sft import _trl_config as sft_config

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native, "amx_bf16": False})
    model = ModelConfig(device="cpu")
    assert sft_config(SFTConfig(), model, tmp_path, 0, 64).bf16 is native
    cfg = RLConfig(algorithm="grpo")
    assert grpo_config(RLRun(tmp_path, [], cfg, None, tmp_path, 0, model), grpo_sizes(cfg), tmp_path).bf16 is native
