"""The PPO trainer under `accelerate launch` with 2 CPU processes (gloo): both take part, both end identical.

accelerate 1.15's `launch --cpu --num_processes 2` starts a single process unless mpirun is set up
(its simple launcher); `--multi_gpu` uses torchrun, and on a machine without CUDA our
`Accelerator(cpu=True)` then runs DDP over gloo on CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, make_policy

ROOT = Path(__file__).resolve().parents[1]



def test_two_processes_share_questions_and_end_identical(tmp_path):
    make_policy(tmp_path / "sft")
    steps, questions, k = 3, 4, 2
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "tests.ppo_smoke",
           "--workdir", str(tmp_path), "--steps", str(steps), "--questions", str(questions), "--k", str(k),
           "--checkpoint-every", "2", "--threads", "1"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU/gloo even on a GPU machine
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["rank"] == r and info["world_size"] == 2 and info["backend"] == "gloo"
        assert info["questions_per_step"] == questions // 2  # each process samples its half
    assert ranks[0]["param_hash"] == ranks[1]["param_hash"]  # gradients were all-reduced
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # only the main process logged
    assert (tmp_path / "ppo" / "value_head.safetensors").exists()
