"""How a stage's failure reaches the user: the stage's report file, and the flow reading it.

A bad input must end as the stage's own one-line error, last on stderr, with exit status 2 and no
retry; DVC's wrapping (exit 255, its own ERROR line) and Prefect's tracebacks must not hide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.pipeline import StageFailed
from tests.helpers import make_project

ROOT = Path(__file__).resolve().parents[1]
GOOD_LINE = {"question": "Tom has 1 apple and buys 2 more. How many apples does he have?",
             "answer": "He has 1 + 2 = 3 apples.\n#### 3"}


def _broken_jsonl(path: Path, good_lines: int = 20) -> Path:
    """`good_lines` GSM8K-style lines, then one that is not JSON (a missing comma at column 35)
    on line good_lines + 1."""
    lines = [json.dumps({**GOOD_LINE, "question": f"{GOOD_LINE['question']} (case {i})"}) for i in range(good_lines)]
    path.write_text("\n".join(lines) + '\n{"question": "a comma is missing" "answer": "3"}\n')
    return path


def _stage(name: str, run, monkeypatch, tmp_path: Path, report: Path | None) -> int:
    """Run reftflow.stage.main in this process as `python -m tasks.<name>` would; its exit status."""
    from reftflow import stage

    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\n")  # every other section has defaults
    monkeypatch.setattr(sys, "argv", [f"tasks/{name}.py", "--params", str(params)])
    if report is None:
        monkeypatch.delenv(stage.REPORT_ENV, raising=False)
    else:
        monkeypatch.setenv(stage.REPORT_ENV, str(report))
    try:
        stage.main(name, "test stage", run)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def _ok(params, args) -> None:
    pass


def _bad_input(params, args) -> None:
    from reftflow.data.records import DataError

    raise DataError("data/raw/t.jsonl:21: invalid JSON (Expecting value at column 1)")


def _diverged(params, args) -> None:
    raise SystemExit(3)


def _interrupted(params, args) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "run, code, message",
    [
        (_ok, 0, ""),
        (_bad_input, 2, "data/raw/t.jsonl:21: invalid JSON (Expecting value at column 1)"),
        (_diverged, 3, ""),
        (_interrupted, 130, "interrupted"),
    ],
)
def test_stage_reports_how_it_ended(tmp_path, monkeypatch, run, code, message):
    from reftflow.stage import read_report

    report = tmp_path / "out" / "report.json"
    assert _stage("demo", run, monkeypatch, tmp_path, report) == code
    assert json.loads(report.read_text()) == {"stage": "demo", "exit_code": code, "message": message}
    assert read_report(report).exit_code == code
    assert list(report.parent.iterdir()) == [report]  # written atomically: no temp file left


def test_crash_is_reported_in_one_line_and_still_raised(tmp_path, monkeypatch):
    def crash(params, args) -> None:
        raise TypeError("unsupported operand\nsecond line")

    report = tmp_path / "report.json"
    with pytest.raises(TypeError):  # the traceback is kept for a real bug
        _stage("demo", crash, monkeypatch, tmp_path, report)
    assert json.loads(report.read_text()) == {"stage": "demo", "exit_code": 1,
                                              "message": "TypeError: unsupported operand"}


def test_no_report_unless_asked_and_none_from_other_ranks(tmp_path, monkeypatch):
    from reftflow.stage import read_report

    out = tmp_path / "out"
    out.mkdir()
    assert _stage("demo", _ok, monkeypatch, tmp_path, None) == 0
    monkeypatch.setenv("RANK", "1")  # torchrun: rank 0 speaks for the group
    assert _stage("demo", _ok, monkeypatch, tmp_path, out / "report.json") == 0
    assert list(out.iterdir()) == [] and read_report(out / "report.json") is None


def test_launcher_keeps_its_rank_zero_failure(tmp_path, monkeypatch):
    """rl under torchrun: rank 0 reported a bad input, the launcher then exits with torchrun's 1."""
    from reftflow.io import write_json

    report = tmp_path / "report.json"
    write_json(report, {"stage": "rl", "exit_code": 2, "message": "train.jsonl:3: no answer"})

    def launcher(params, args) -> None:
        raise SystemExit(1)

    assert _stage("rl", launcher, monkeypatch, tmp_path, report) == 1
    assert json.loads(report.read_text())["exit_code"] == 2


def test_real_stage_reports_a_broken_jsonl_line(tmp_path):
    """`python -m tasks.prepare` as DVC runs it: one line on stderr, exit 2, the report says why."""
    import yaml

    data = _broken_jsonl(tmp_path / "t.jsonl")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {"source": "jsonl", "path": str(data)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    report = tmp_path / "report.json"
    env = {**os.environ, "REFTFLOW_STAGE_REPORT": str(report), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tasks.prepare"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    message = f"{data}:21: invalid JSON (Expecting ',' delimiter at column 35)"
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"reftflow prepare: error: {message}"]
    assert json.loads(report.read_text()) == {"stage": "prepare", "exit_code": 2, "message": message}
    assert not (tmp_path / "data").exists()


DVC_FAILED = "ERROR: failed to reproduce 'rl': failed to run: python -m tasks.rl, exited with {}"


@pytest.mark.parametrize(
    "code, report, output, expected",
    [
        (0, None, "Stage 'rl' didn't change, skipping", {"ran": False}),
        (0, (0, ""), "Running stage 'rl':", {"ran": True}),
        (255, (2, "train.jsonl:3: no answer"), DVC_FAILED.format(2),
         {"ran": True, "bad_input": "train.jsonl:3: no answer"}),
        # rl's divergence: exit 3 after its own error line; that line, not DVC's, says why
        (255, (3, ""), f"step 4\nreftflow rl: error: KL 41.2 > 20 at step 4\n{DVC_FAILED.format(3)}",
         StageFailed("rl", 3, "reftflow rl: error: KL 41.2 > 20 at step 4")),
        (255, (1, "RuntimeError: out of memory"), f"Traceback ...\n{DVC_FAILED.format(1)}",
         StageFailed("rl", 1, "RuntimeError: out of memory")),
        # no report (killed by a signal, or DVC failed first) or a clean report: DVC's line and code
        (255, None, f"Running stage 'rl':\n{DVC_FAILED.format(-9)}", StageFailed("rl", 255, DVC_FAILED.format(-9))),
        (255, (0, ""), "ERROR: output 'models/rl' does not exist",
         StageFailed("rl", 255, "ERROR: output 'models/rl' does not exist")),
    ],
)
def test_stage_outcome_comes_from_its_report(code, report, output, expected):
    from flows.pipeline import StageResult, _outcome
    from reftflow.stage import StageReport

    stage_report = StageReport("rl", *report) if report else None
    if isinstance(expected, StageFailed):
        with pytest.raises(StageFailed) as e:
            _outcome("rl", code, stage_report, output)
        assert (e.value.exit_code, e.value.tail) == (expected.exit_code, expected.tail)
    else:
        assert _outcome("rl", code, stage_report, output) == StageResult("rl", **expected)


def test_flow_failures_survive_pickling():
    """Prefect may persist a failed state's exception: both must round-trip with their fields."""
    import pickle

    from flows.pipeline import StageBadInput

    bad = pickle.loads(pickle.dumps(StageBadInput("prepare", "t.jsonl:21: invalid JSON")))
    assert str(bad) == "reftflow prepare: error: t.jsonl:21: invalid JSON"
    failed = pickle.loads(pickle.dumps(StageFailed("gate", 1, "database is locked")))
    assert (str(failed), failed.exit_code) == ("stage 'gate' failed (exit 1): database is locked", 1)


@pytest.mark.slow
@pytest.mark.timeout(400)  # ~30 s on 2 busy cores: a fresh Prefect DB, DVC, one stage
def test_broken_jsonl_line_ends_the_flow_with_the_stages_line(tmp_path):
    """The whole path on a fresh machine: empty PREFECT_HOME (the temporary server migrates a new
    DB, which needs more than Prefect's default startup timeout here), no PREFECT_API_URL."""
    from mlflow.tracking import MlflowClient

    data = _broken_jsonl(tmp_path / "t.jsonl")
    project = make_project(tmp_path / "proj", f"data: {{source: jsonl, path: {data}}}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_PROFILE",
                        "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # from the project, as `make run` does: the MLflow store is the project's own
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project-dir", str(project)], cwd=project,
                          env=env, capture_output=True, text=True, timeout=380)
    everything = proc.stdout + proc.stderr
    assert proc.returncode == 2, everything[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"reftflow prepare: error: {data}:21: invalid JSON ("), everything[-3000:]
    assert "Traceback" not in everything
    assert proc.stdout.count("Running stage 'prepare'") == 1  # a bad input is not retried
    assert "Running stage 'sft'" not in proc.stdout
    assert not (project / "data" / "prepared" / "train.jsonl").exists() and not (project / "models").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string="tags.`reftflow.kind` = 'pipeline'")
    assert [r.info.status for r in parents] == ["FAILED"]
