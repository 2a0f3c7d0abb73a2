"""Each benchmark runs from the command line in its smallest mode and writes the JSON it documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def test_reft_vs_sft_quick_writes_the_documented_keys(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "benchmarks/reft_vs_sft.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    for arm in ("warmup", "sft_continued", "ppo", "grpo"):
        assert 0.0 <= data["heldout_accuracy"][arm]["mean"] <= 1.0 and data["heldout_accuracy"][arm]["std"] >= 0.0
    assert len(data["seeds"]) >= 3
    assert data["episodes_per_s"]["ppo"] > 0 and data["episodes_per_s"]["grpo"] > 0
    fractions = data["ppo_step_fraction"]
    assert set(fractions) == {"generate", "forward", "update", "other"}
    assert sum(fractions.values()) == pytest.approx(1.0, abs=0.02)
    assert "(c) PPO" in proc.stdout
