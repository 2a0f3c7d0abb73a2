"""`model.fsdp` in our PPO, on the CPU: 2 processes over gloo, each holding half the policy (FSDP2 through
accelerate's plugin; reftflow/fsdp.py says why accelerate needs a nudge on a CPU). Sharded, it trains what
DDP trains: the same metrics every step and the same weights to float rounding (the gradient norm is
summed from shards in another order). Its checkpoint (whole weights, the optimizer state gathered) resumes
to the very weights of an uninterrupted run. TRL's Trainers stay DDP on a CPU (tests/test_distributed.py
checks what they are given)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, make_policy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMOKE = ["-m", "tests.ppo_smoke", "--questions", "4", "--k", "2", "--threads", "1", "--checkpoint-every", "2"]


def _run(workdir: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *SMOKE,
           "--workdir", str(workdir), *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ranks(workdir: Path) -> list[dict]:
    return [json.loads((workdir / f"rank{r}.json").read_text()) for r in (0, 1)]


def _metrics(workdir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "rl/episodes_per_s"}
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three PPO runs of 3 steps from one policy: DDP, FSDP, and FSDP killed (stopped) after step 2 and run again."""
    base = tmp_path_factory.mktemp("fsdp")
    make_policy(base / "policy")
    dirs = {name: base / name for name in ("ddp", "fsdp", "resumed")}
    for d in dirs.values():
        shutil.copytree(base / "policy", d / "sft")
    _run(dirs["ddp"], "--steps", "3")
    _run(dirs["fsdp"], "--steps", "3", "--fsdp")
    _run(dirs["resumed"], "--steps", "2", "--fsdp", "--keep-checkpoints")
    _run(dirs["resumed"], "--steps", "3", "--fsdp")
    return dirs


def test_fsdp_shards_the_policy_and_trains_what_ddp_trains(runs):
    from safetensors.torch import load_file

    fsdp, ddp = _ranks(runs["fsdp"]), _ranks(runs["ddp"])
    assert [r["distributed_type"] for r in fsdp] == ["DistributedType.FSDP"] * 2 and fsdp[0]["backend"] == "gloo"
    assert [r["distributed_type"] for r in ddp] == ["DistributedType.MULTI_CPU"] * 2
    numel = fsdp[0]["numel"]
    assert sum(r["local_numel"] for r in fsdp) == numel and all(r["local_numel"] < 0.6 * numel for r in fsdp)
    assert [m["step"] for m in _metrics(runs["fsdp"])] == [1, 2, 3]
    for a, b in zip(_metrics(runs["fsdp"]), _metrics(runs["ddp"])):
        # a clip fraction counts tokens past a threshold: rounding in the 7th digit can move one across it
        smooth, steps = [k for k in a if not k.endswith("clipfrac")], [k for k in a if k.endswith("clipfrac")]
        assert {k: a[k] for k in smooth} == pytest.approx({k: b[k] for k in smooth}, rel=1e-4, abs=1e-6)
        assert {k: a[k] for k in steps} == pytest.approx({k: b[k] for k in steps}, abs=0.02)
    for name in ("model.safetensors", "value_head.safetensors"):
        sharded, replicated = load_file(runs["fsdp"] / "ppo" / name), load_file(runs["ddp"] / "ppo" / name)
        assert sorted(sharded) == sorted(replicated), name  # the same files: a tied weight saved once
        assert max((sharded[k] - replicated[k]).abs().max().item() for k in sharded) < 1e-5


def test_a_resumed_fsdp_run_ends_with_the_uninterrupted_ones_weights(runs):
    resumed, uninterrupted = _ranks(runs["resumed"]), _ranks(runs["fsdp"])
    assert resumed[0]["param_hash"] == uninterrupted[0]["param_hash"]
    assert _metrics(runs["resumed"])[-1] == _metrics(runs["fsdp"])[-1]  # step 3, from step 2's checkpoint
