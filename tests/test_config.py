"""params.yaml → typed config: defaults, and one clear line for each kind of mistake."""

import subprocess
import sys
from pathlib import Path

import pytest

from reftflow.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.ppo.algorithm in ("ppo", "grpo", "raft")
    assert params.ppo.raft.lr == pytest.approx(3e-5)  # a nested section, typed
    assert params.sft.lr == pytest.approx(1e-3)  # written `1.0e-3`
    assert params.grader["type"] == "numeric_answer"


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; our loader reads it as the number users mean.
    p = tmp_path / "params.yaml"
    p.write_text("ppo:\n  lr: 1e-4\n")
    assert load_params(p).ppo.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("ppo:\n  lrr: 0.1\n", "unknown key 'ppo.lrr'"),  # typo in a key
        ("sft:\n  epochs: ten\n", "'sft.epochs': Input should be a valid number (got 'ten')"),  # string for a number
        ("ppo:\n  steps: 2.5\n", "'ppo.steps': Input should be a valid integer"),  # float for an int
        ("modle:\n  hidden_size: 8\n", "unknown key 'modle'"),  # typo in a section
        ("ppo:\n  algorithm: trpo\n", "'ppo.algorithm': Input should be 'ppo', 'grpo' or 'raft'"),  # not a choice
        ("ppo:\n  algorithm: raft\n  num_processes: 2\n", "algorithm 'raft' runs on one process"),  # cannot work
        ("ppo:\n  raft:\n    lr: 0\n", "'ppo.raft.lr': Input should be greater than 0"),  # nested range
        ("data:\n  min_ops: 3\n  max_ops: 1\n", "'data': min_ops must be <= max_ops"),  # cross-field rule
        ("ppo: [1, 2]\n", "'ppo': Input should be a valid dictionary"),  # wrong shape
        ("ppo:\n  lr: -1\n", "'ppo.lr': Input should be greater than 0"),  # out of range
    ],
)
def test_bad_params_give_one_line_naming_file_and_key(tmp_path, yaml_text, expected):
    p = tmp_path / "params.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_params(p)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: ")
    assert expected in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("seed: 0\nppo:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(p)


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_params([1, 2], source="x.yaml")


def test_config_is_frozen():
    params = parse_params({})
    with pytest.raises(Exception):
        params.ppo.lr = 1.0  # type: ignore[misc]


def test_stage_entry_point_exits_nonzero_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("sft:\n  epochs: ten\n")
    proc = subprocess.run([sys.executable, "-m", "tasks.prepare"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["reftflow prepare: error: params.yaml: 'sft.epochs': Input should be a valid number (got 'ten')"]
    assert not (tmp_path / "data").exists()  # nothing written
