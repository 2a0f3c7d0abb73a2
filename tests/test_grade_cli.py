"""`reftflow grade` end to end through a subprocess, on fixture files with hand-computed scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "graders"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def grade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "grade", *args], capture_output=True, text=True, cwd=ROOT, timeout=100
    )


@pytest.mark.parametrize(
    "grader, samples, expected, errored",
    [
        # 7 right; 13 for 12 → ReFT's 0.1; no `####` → 0; `$1,234.50` vs 1234.5 → right
        ("numeric.json", "numeric.jsonl", [1.0, 0.1, 0.0, 1.0], 0),
        # the seed example: correct gene second → 0.7; first (case-insensitive) → 1.0; fifth → past scores; absent
        ("ranked.yaml", "ranked.jsonl", [0.7, 1.0, 0.0, 0.0], 0),
        # 0.75·ans + 0.25·fmt: both; 0.75·0.1 + 0.25; answer without the format; neither
        ("multi.json", "multi.jsonl", [1.0, 0.325, 0.75, 0.0], 0),
        # 1 − |words − target| / target: 4/4 → 1; 2/4 → 0.5; 6/2 → clipped to 0; target 0 → ZeroDivisionError
        ("python.json", "python.jsonl", [1.0, 0.5, 0.0, 0.0], 1),
        # 12 right; 35 wrong → 0.1; fenced 0.5 right; 1/0 raises → 0 with an error
        ("program.json", "program.jsonl", [1.0, 0.1, 1.0, 0.0], 1),
        # Indel ratio: identical; abce/abcd = 6/8; nothing shared
        ("similarity.json", "similarity.jsonl", [1.0, 0.75, 0.0], 0),
        # eq is exact (case matters); the blank line is skipped
        ("string.json", "string.jsonl", [1.0, 0.0, 1.0], 0),
    ],
)
def test_grade_fixture_files(tmp_path, grader, samples, expected, errored):
    out = tmp_path / "scores.jsonl"
    proc = grade("--grader", str(DATA / grader), "--input", str(DATA / samples), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["score"] for r in rows] == pytest.approx(expected)
    assert sum(r["error"] is not None for r in rows) == errored
    assert all(set(r) == {"score", "sub_scores", "error"} for r in rows)
    assert f"graded {len(expected)} samples" in proc.stderr and f"{errored} errored" in proc.stderr
    assert "samples/s" in proc.stderr and "Traceback" not in proc.stderr


def test_grade_to_stdout_keeps_order_and_sub_scores():
    proc = grade("--grader", str(DATA / "multi.json"), "--input", str(DATA / "multi.jsonl"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows[1] == {"score": pytest.approx(0.325), "sub_scores": {"ans": 0.1, "fmt": 1.0}, "error": None}


def test_validate():
    proc = grade("--grader", str(DATA / "ranked.yaml"), "--validate")
    assert proc.returncode == 0 and proc.stdout.startswith("OK: grader 'gene_rank' (ranked_list)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grader", "bad_operation.json", "--validate"],
         "grader 'acc' (multi → 'fmt'): unknown operation 'equals' (expected eq, ne, like, ilike)"),
        # the template names `solution`, which the input's items lack: refused before grading
        (["--grader", "bad_field.json", "--input", "numeric.jsonl"], "template names item field 'solution'"),
        (["--grader", "numeric.json", "--input", "bad_json.jsonl"], "bad_json.jsonl:2: invalid JSON"),
        (["--grader", "numeric.json", "--input", "missing_item.jsonl"], "missing_item.jsonl:2: missing 'item'"),
        (["--grader", "nonexistent.json", "--validate"], "cannot read"),
        (["--grader", "numeric.json"], "--input is required"),
    ],
)
def test_bad_config_or_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "scores.jsonl"
    args = [str(DATA / a) if a.endswith((".json", ".jsonl", ".yaml")) else a for a in args]
    proc = grade(*args, "--output", str(out))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_console_script_is_wired():
    from flows.cli import build_parser

    args = build_parser().parse_args(["grade", "--grader", "g.json", "--validate"])
    assert callable(args.func) and args.validate
