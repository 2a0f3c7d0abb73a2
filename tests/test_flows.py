"""The flow's command line, its environment defaults, its cron deployment, and the layering."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("  lr: 3.0e-5", "  lrr: 3.0e-5", "params.yaml: unknown key 'rl.ppo.lrr'"),
        ("\nrl:\n", "\nppo:\n", "params.yaml: section 'ppo' is now 'rl': the keys every algorithm reads stay under rl:, "
                                "and each algorithm's own go under rl.ppo, rl.raft or rl.grpo (ppo.lr is rl.ppo.lr, "
                                "ppo.ppo_epochs is rl.ppo.epochs; the shipped params.yaml has them all)"),
        ("  epochs: 100", "  epochs: ten", "params.yaml: 'sft.epochs': Input should be a valid number (got 'ten')"),
    ],
)
def test_typo_in_params_gives_one_line_and_exit_2(tmp_path, old, new, message):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    text = (ROOT / "params.yaml").read_text()
    assert old in text
    (tmp_path / "params.yaml").write_text(text.replace(old, new, 1))
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"reftflow: error: {tmp_path}/{message}"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_section_is_named_before_dvc_would_fail(tmp_path):
    from reftflow.config import ConfigError

    from reftflow.project import check_project

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"key 'data.source' is missing \(dvc.yaml stage 'prepare' reads it; write it out"):
        check_project(tmp_path)


def test_bad_grader_is_refused_before_any_stage(tmp_path):
    from reftflow.graders import GraderConfigError

    from reftflow.project import check_project

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    text = (ROOT / "params.yaml").read_text().replace("  type: numeric_answer", "  type: numeric_answr")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(GraderConfigError, match="numeric_answr"):
        check_project(tmp_path)


@pytest.mark.slow  # Prefect's temporary server starts for it: ~20 s
def test_cron_deployment_is_registered(prefect_server, tmp_path):
    from prefect import get_client

    from flows.deploy import build_deployment

    dep_id = build_deployment(name="nightly-test", cron="0 2 * * *", project_dir=tmp_path).apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
    assert dep.name == "nightly-test"
    assert dep.schedules[0].schedule.cron == "0 2 * * *" and dep.schedules[0].active
    assert dep.parameters["project_dir"] == str(tmp_path.resolve())


def test_bad_cron_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.deploy", "--cron", "every day", "--apply-only"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--cron 'every day'" in proc.stderr


def test_env_defaults_reach_prefect_before_it_reads_its_settings():
    """Prefect reads its settings once, at import: importing the flow must set the defaults first."""
    code = ("import flows.pipeline\n"
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as T\n"
            "from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as A\n"
            "print(T.value(), A.value())\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["120", "False"]
    # setdefault: the user's own value wins
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"})
    assert proc.stdout.split()[0] == "300"


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["grade", "--help"], ["serve", "--help"]])
def test_console_script_answers_help(args):
    script = Path(sys.executable).parent / "reftflow"
    assert script.exists(), "console script missing: pip install -e . (make setup) generates it"
    proc = subprocess.run([str(script), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: reftflow {args[0] if args[0] != '--help' else ''}".rstrip())


def test_library_never_imports_the_app_layer():
    """`reftflow` is the library; `flows` (Prefect flow, deployment, command line) builds on it, not the reverse."""
    offenders = []
    for path in sorted((ROOT / "reftflow").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                          if n == "flows" or n.startswith("flows.")]
    assert offenders == []
