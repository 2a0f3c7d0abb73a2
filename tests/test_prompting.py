"""One prompt renderer: chat messages through the tokenizer's template (or a plain one), text prompts
as they are, and the default template for a bare item; the stages that use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from reftflow.data.records import Record
from reftflow.modeling import build_char_tokenizer
from reftflow.prompting import render_prompt
from tests.helpers import TINY_PARAMS, make_project

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Answer with a gene."},
        {"role": "user", "content": [{"type": "text", "text": "Which gene?"}]}]


def test_text_prompts_and_the_default_template():
    assert render_prompt(Record("a", {"question": "2+2?"}, prompt="custom: 2+2?")) == "custom: 2+2?"
    assert render_prompt(Record("a", {"question": "2+2?"})) == "Q: 2+2?\nA:"


def test_messages_without_a_chat_template_keep_every_role():
    assert render_prompt(Record("a", {}, messages=CHAT), build_char_tokenizer()) == (
        "system: Be brief.\ndeveloper: Answer with a gene.\nuser: Which gene?\nassistant:")


def test_messages_go_through_the_tokenizers_chat_template():
    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_prompt(Record("a", {}, messages=CHAT), tok) == (
        "<system>Be brief.\n<developer>Answer with a gene.\n<user>Which gene?\n<assistant>")


def test_no_reference_completions_pass_the_base_model_through(tmp_path):
    """Answer-only data: the sft stage trains nothing, says so, and RL gets the base model."""
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(1, 30)]
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load(TINY_PARAMS)
    params["data"] = {"source": "file", "path": str(data), "num_val": 5}
    project = make_project(tmp_path / "proj", yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(project)}
    for stage in ("prepare", "sft"):
        proc = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the base model passes through" in proc.stdout
    summary = json.loads((project / "metrics/sft.json").read_text())
    assert summary["skipped"] == 1.0 and summary["global_steps"] == 0.0
    assert (project / "models/sft/config.json").exists()
    report = json.loads((project / "metrics/prepare.json").read_text())
    assert report["train_worked"] == 0 and report["train_answer_only"] == 24


def test_sft_examples_longer_than_the_context_are_counted_not_hidden(tmp_path):
    from reftflow.config import ModelConfig, SFTConfig
    from reftflow.data.synthetic import generate
    from reftflow.sft import train_sft

    records = generate(6, seed=0)
    texts = [render_prompt(r) + r.completion for r in records]  # one character is one token here
    limit = sorted(len(t) for t in texts)[3]  # the 2 longest examples do not fit
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=limit)
    summary = train_sft(records, cfg, SFTConfig(max_steps=1, batch_size=2), tmp_path / "m", seed=0)
    assert summary["too_long"] == sum(len(t) > limit for t in texts) == 2
