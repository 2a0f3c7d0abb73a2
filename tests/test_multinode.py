"""Training on several machines, simulated on this one: each "machine" is its own torchrun launcher, and the
launchers meet at a rendezvous endpoint on 127.0.0.1, DDP over gloo (real processes, nothing mocked).

Two machines of one process train exactly the weights one machine of two processes trains, with our
PPO, TRL's SFT and TRL's GRPO: a process's work depends on its global rank and the world size (its share of
the questions or batches, its seeds), never on which machine it runs on, and the gradient all-reduce over
2 processes adds the same two numbers either way. That is why the layout lives in the environment and not in params.yaml (README, "Training on
several nodes").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, TINY_PARAMS, free_port, make_policy, make_project, set_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SMOKE = ["-m", "tests.ppo_smoke", "--steps", "3", "--questions", "4", "--k", "2", "--threads", "1"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}  # gloo even on a GPU box


def _all(procs: list[subprocess.Popen], timeout: int = 240) -> list[tuple[int, str]]:
    """Wait for every process; (exit code, stderr tail) of each."""
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err[-3000:]))
    return out


def _ranks(workdir: Path) -> list[dict]:
    return [json.loads((workdir / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_machines_of_one_process_train_what_one_machine_of_two_trains(tmp_path):
    one, two = tmp_path / "1x2", tmp_path / "2x1"
    make_policy(one / "sft")
    shutil.copytree(one / "sft", two / "sft")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    single = subprocess.run([*torchrun, "--standalone", "--nproc_per_node=2", *SMOKE, "--workdir", str(one)],
                            capture_output=True, text=True, timeout=240, env=_env(), cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    # what the brief of a cluster says: the same endpoint on every machine, its own --node_rank on each,
    # torch's c10d rendezvous (it numbers the machines itself: whichever gets rank 0 does not matter here)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([*torchrun, "--nnodes=2", f"--node_rank={k}", "--nproc_per_node=1",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=two-machines",
                               "--max_restarts=0", *SMOKE, "--workdir", str(two)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
             for k in (0, 1)]
    for code, err in _all(nodes):
        assert code == 0, err
    a, b = _ranks(one), _ranks(two)
    assert [r["world_size"] for r in a + b] == [2, 2, 2, 2] and b[0]["backend"] == "gloo"
    hashes = {r["param_hash"] for r in a + b}
    assert len(hashes) == 1, f"1x2 {[r['param_hash'] for r in a]} vs 2x1 {[r['param_hash'] for r in b]}"
    print(f"1 machine x 2 processes and 2 machines x 1 process: policy + value head sha256 {hashes.pop()}")
    steps = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3]  # rank 0 alone logged
    assert all(m["rl/kl"] != 0 for m in steps[1:])  # the policy moved away from the reference: it trained


def _stage_on_two_machines(project: Path, stage: str, env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """`python -m tasks.<stage>` as each machine runs it: the same command and project, only
    REFTFLOW_NODE_RANK differs (the project directory is shared, as on a cluster's filesystem)."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], cwd=project, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "REFTFLOW_NNODES": "2", "REFTFLOW_NODE_RANK": str(k),
                                   "REFTFLOW_RDZV_ENDPOINT": endpoint})
             for k in (0, 1)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"{stage}: {err[-3000:]}"
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _model_hash(model_dir: Path) -> str:
    from safetensors.torch import load_file

    from tests.ppo_smoke import parameter_hash

    return parameter_hash(load_file(str(model_dir / "model.safetensors")))


def test_the_stages_run_on_two_machines_node_0_records_them_and_grpo_trains_what_one_machine_trains(tmp_path):
    """The stage entry points, as each machine runs them; TRL's SFTTrainer, and its GRPOTrainer for rl (our PPO
    is above). GRPO learns only from reward differences within a question's samples: the tiny untrained
    model's answers all score alike on the numeric grader, so a graded similarity to the answer makes
    the steps move the weights (the models compared are not the SFT model)."""
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    set_params(project, sft={"num_processes": 2}, rl={"algorithm": "grpo", "num_processes": 2})
    params = yaml.safe_load((project / "params.yaml").read_text())  # the grader replaced, not merged
    params["grader"] = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
                        "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(project))
    models = {}
    for stage in ("prepare", "sft", "rl"):  # 1 machine x 2 processes (rl.num_processes: 2 on this one)
        one = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=240)
        assert one.returncode == 0, one.stderr[-3000:]
        models[stage] = _model_hash(project / f"models/{stage}") if stage != "prepare" else None
    sft = _stage_on_two_machines(project, "sft", env)
    assert _model_hash(project / "models/sft") == models["sft"]  # 2 machines x 1 process = 1 x 2
    rl = _stage_on_two_machines(project, "rl", env)
    # node 0 holds global rank 0 (static rendezvous): it alone reports, writes and logs
    assert "sft (" in sft[0].stdout and "sft (" not in sft[1].stdout
    assert "rl (grpo, " in rl[0].stdout and "2 steps" in rl[0].stdout and "rl (" not in rl[1].stdout
    for out in ("models/sft/model.safetensors", "models/rl/model.safetensors", "metrics/sft.json", "metrics/rl.json"):
        assert (project / out).exists(), out
    assert _model_hash(project / "models/rl") == models["rl"] != models["sft"]  # = 1 x 2, and trained
    print(f"1 x 2 = 2 x 1: sft sha256 {models['sft']}, rl (grpo) sha256 {models['rl']}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # one MLflow run per stage run, however many processes: sft and rl ran twice (1 x 2, then 2 x 1)
    assert sorted(r.data.tags["reftflow.stage"] for r in runs) == ["prepare", "rl", "rl", "sft", "sft"]
    last_rl = max((r for r in runs if r.data.tags["reftflow.stage"] == "rl"), key=lambda r: r.info.start_time)
    assert [m.step for m in client.get_metric_history(last_rl.info.run_id, "train_reward_mean")] == [1, 2]
