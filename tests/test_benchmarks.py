"""Each benchmark runs from the command line in its smallest mode and writes the JSON it documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # each runs a benchmark end to end


def run_quick(script: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`python benchmarks/<script> --quick --out OUT` as a user runs it: its output and the JSON it wrote."""
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_reft_vs_sft_quick_writes_the_documented_keys(tmp_path):
    proc, data = run_quick("reft_vs_sft.py", tmp_path / "r.json")
    assert set(data["tasks"]) == {"arithmetic", "genes"}  # --quick: the tiny-model tasks
    for name, task in data["tasks"].items():
        arms = task["arms"]
        assert set(arms) == {"warmup", "sft_continued", "ppo", "grpo", "raft"}
        assert len(task["seeds"]) >= 3 and len(arms["warmup"]["pass_rate"]["per_seed"]) == 1  # one warm-up
        for arm, row in arms.items():
            for metric in ("pass_rate", "mean_score"):
                stats = row[metric]
                assert 0.0 <= stats["mean"] <= 1.0 and stats["std"] >= 0.0, (name, arm, metric)
                against = {"vs_ppo"} if arm == "warmup" else {"vs_warmup"} | ({"vs_ppo"} if arm != "ppo" else set())
                for key in against:
                    assert stats[key]["low"] <= stats[key]["diff"] <= stats[key]["high"], (name, arm, key)
            if arm != "warmup":
                assert len(row["runs"]) == len(task["seeds"]) and all(r["steps"] >= 1 for r in row["runs"])
        assert all(task["episodes_per_s"][a] > 0 for a in ("ppo", "grpo", "raft"))
        assert f"{name}: " in proc.stdout
    shares = data["tasks"]["genes"]["genes"]
    assert all(0.0 <= v <= 1.0 for kind in shares.values() for v in kind.values()), shares
    assert "(c) PPO" in proc.stdout and "(e) RAFT" in proc.stdout and "listing a gene twice" in proc.stdout


def test_regime_probe_runs_each_mode_and_logs_json(tmp_path):
    """The dev-split probes behind docs/regime.md: warm -> sft / rl / raft from it, tiny sizes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regime_probe", ROOT / "benchmarks" / "regime_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    tiny = ["--workdir", str(tmp_path), "--threads", "1", "--seconds", "30", "--eval-every", "1",
            "--data", '{"num_train": 48, "num_val": 16, "max_ops": 1, "worked_fraction": 0.5}',
            "--model", '{"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}',
            "--sft", '{"max_steps": 4, "batch_size": 8}',
            "--rl", '{"algorithm": "ppo", "steps": 2, "questions_per_step": 4, "samples_per_question": 2, '
                    '"max_new_tokens": 16, "ppo": {"minibatch_size": 4}}']
    warm = probe.main(["warm", "--name", "w", *tiny])
    assert warm["worked"] == 24 and warm["steps"] == 4 and 0.0 <= warm["greedy"] <= 1.0  # half of 48
    assert probe.main(["sft", "--name", "s", "--warm", "w", *tiny])["steps"] == 4
    ppo = probe.main(["rl", "--name", "p", "--warm", "w", *tiny])
    assert ppo["step"] == 2 and ppo["episodes_per_s"] > 0 and (tmp_path / "p" / "config.json").exists()
    raft = probe.main(["raft", "--name", "r", "--warm", "w", *tiny])
    assert 0.0 <= raft["sample_accuracy"] <= raft["pass_at_4"] <= 1.0 and raft["added"] <= 24
    rows = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["warm", "sft", "rl", "rl", "raft"]  # rl: evaluated at steps 1 and 2
    with pytest.raises(SystemExit):
        probe.main(["rl", "--name", "x", *tiny])  # sft/rl/raft need --warm


def test_precision_quick_times_both_precisions_and_says_what_auto_picks(tmp_path):
    proc, data = run_quick("precision.py", tmp_path / "p.json")
    assert data["auto_picks"] == ("bf16" if data["native_bf16"] else "float32")
    assert len(data["shapes"]) == 2
    for row in data["shapes"].values():
        for part in ("train_step_s", "generate_s"):
            f32, bf16 = row["median_s"]["float32"][part], row["median_s"]["bf16"][part]
            assert f32 > 0 and bf16 > 0 and abs(row["bf16_over_float32"][part] - bf16 / f32) < 1e-9
    assert f"auto picks {data['auto_picks']}" in proc.stdout and "tiny (default)" in proc.stdout
