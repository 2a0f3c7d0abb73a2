"""params.yaml → typed config: defaults, and one clear line for each kind of mistake."""

import subprocess
import sys
from pathlib import Path

import pytest

from reftflow.config import ConfigError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_yaml_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.rl.algorithm in ("ppo", "grpo", "raft")
    assert params.rl.raft.lr == pytest.approx(3e-5)  # a nested section, typed
    assert params.sft.lr == pytest.approx(1e-3)  # written `1.0e-3`
    assert params.grader["type"] == "numeric_answer"


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; our loader reads it as the number users mean.
    p = tmp_path / "params.yaml"
    p.write_text("rl:\n  ppo:\n    lr: 1e-4\n")
    assert load_params(p).rl.ppo.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("rl:\n  ppo:\n    lrr: 0.1\n", "unknown key 'rl.ppo.lrr'"),  # typo in a key
        ("sft:\n  epochs: ten\n", "'sft.epochs': Input should be a valid number (got 'ten')"),  # string for a number
        ("rl:\n  steps: 2.5\n", "'rl.steps': Input should be a valid integer"),  # float for an int
        ("modle:\n  hidden_size: 8\n", "unknown key 'modle'"),  # typo in a section
        ("rl:\n  algorithm: trpo\n", "'rl.algorithm': Input should be 'ppo', 'grpo' or 'raft'"),  # not a choice
        ("rl:\n  algorithm: raft\n  num_processes: 2\n", "algorithm 'raft' runs on one process"),  # cannot work
        ("rl:\n  raft:\n    lr: 0\n", "'rl.raft.lr': Input should be greater than 0"),  # nested range
        ("rl:\n  ppo:\n    ppo_epochs: 2\n", "unknown key 'rl.ppo.ppo_epochs'"),  # an old name
        ("model:\n  bf16: maybe\n", "'model.bf16'"),  # auto, true or false
        ("data:\n  min_ops: 3\n  max_ops: 1\n", "'data': min_ops must be <= max_ops"),  # cross-field rule
        ("rl: [1, 2]\n", "'rl': Input should be a valid dictionary"),  # wrong shape
        ("rl:\n  grpo:\n    lr: -1\n", "'rl.grpo.lr': Input should be greater than 0"),  # out of range
        ("ppo:\n  lr: 1.0e-5\n", "section 'ppo' is now 'rl'"),  # a params.yaml from before the rename
        ("sft:\n  batch_size: 6\n  num_processes: 4\n", "'sft': batch_size 6 must be a multiple of num_processes 4"),
        # sharding rules across sections name their keys themselves
        ("model:\n  fsdp: true\n", "model.fsdp: rl.algorithm raft runs on one process"),
        ("model:\n  fsdp: true\nrl:\n  algorithm: ppo\n", "model.fsdp needs rl.eval_interval: 0"),
        ("model:\n  fsdp: true\n  lora: {}\nrl:\n  algorithm: grpo\n  eval_interval: 0\n",
         "model.fsdp with model.lora: sharding is for full fine-tuning"),
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
    p.write_text("seed: 0\nrl:\n  steps: [1\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(p)


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_params([1, 2], source="x.yaml")


def test_config_is_frozen():
    params = parse_params({})
    with pytest.raises(Exception):
        params.rl.ppo.lr = 1.0  # type: ignore[misc]


def test_stage_entry_point_exits_nonzero_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("sft:\n  epochs: ten\n")
    proc = subprocess.run([sys.executable, "-m", "tasks.prepare"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["reftflow prepare: error: params.yaml: 'sft.epochs': Input should be a valid number (got 'ten')"]
    assert not (tmp_path / "data").exists()  # nothing written


def test_params_yaml_and_the_typed_defaults_agree_on_every_key():
    """One source of defaults: the shipped params.yaml writes out exactly what reftflow/config.py defaults to
    (and the arithmetic example is the same file), so no key means one thing here and another there."""
    import yaml

    shipped = load_params(ROOT / "params.yaml").model_dump()
    assert shipped == parse_params({}).model_dump()

    def keys(tree: dict, prefix: str = "") -> set[str]:  # every key path, down to the typed leaves
        out = set()
        for k, v in tree.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in {"grader", "hf_columns", "lora", "response_format"}:
                out |= keys(v, f"{prefix}{k}.")
        return out

    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert keys(written) == keys(shipped)  # params.yaml writes out every key (nothing hidden in a default)
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == yaml.safe_load(
        (ROOT / "reftflow/examples/arithmetic/params.yaml").read_text())


def test_the_prompt_template_default_is_written_once():
    """In the code, the default prompt template is one constant: config's default, prompting's fallback and
    `reftflow data check --prompt-template`'s default are the same object."""
    from reftflow import config, prompting
    from reftflow.data import check

    assert config.DataConfig().prompt_template is config.DEFAULT_PROMPT_TEMPLATE
    assert prompting.DEFAULT_PROMPT_TEMPLATE is config.DEFAULT_PROMPT_TEMPLATE
    assert check.DEFAULT_PROMPT_TEMPLATE is config.DEFAULT_PROMPT_TEMPLATE
    sources = [p for p in (ROOT / "reftflow").rglob("*.py") if "Q: {{ item.question }}" in p.read_text()]
    assert sources == [ROOT / "reftflow/config.py"]


def test_a_change_to_rl_updates_the_key_where_it_lives():
    from reftflow.config import RLConfig

    cfg = RLConfig().updated(algorithm="ppo", steps=3, lr=1e-3, epochs=1)
    assert (cfg.algorithm, cfg.steps, cfg.ppo.lr, cfg.ppo.epochs, cfg.raft.lr) == ("ppo", 3, 1e-3, 1, RLConfig().raft.lr)
    with pytest.raises(ConfigError, match="unknown key 'raft.lrr'"):
        RLConfig().updated(lrr=1.0)
