"""The same code on inputs other than the embedded default: a real GSM8K file, another HF architecture."""

from __future__ import annotations

import json

import pytest

from reftflow.config import DataConfig, ModelConfig, SFTConfig
from tests.helpers import SHARED_GSM8K


@pytest.mark.skipif(not (SHARED_GSM8K / "train.jsonl").exists(), reason="../shared/data/gsm8k not present")
def test_real_gsm8k_files_prepare_cleanly():
    from reftflow.data.prepare import build_splits

    cfg = DataConfig(source="jsonl", path=str(SHARED_GSM8K / "train.jsonl"), val_path=str(SHARED_GSM8K / "test.jsonl"),
                     num_train=100_000, num_val=100_000, worked_fraction=1.0)
    train, val, report = build_splits(cfg, seed=0)
    assert report["val_items"] == 1319
    assert report["train_items"] + report["duplicates_dropped"] + report["leaked_dropped"] == 7473
    first = json.loads((SHARED_GSM8K / "train.jsonl").read_text().splitlines()[0])
    rec = next(r for r in train + val if r.item["question"] == first["question"].strip())
    assert rec.item["answer"] == first["answer"]  # every field reaches graders as it was
    final = first["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert rec.completion.endswith(f"#### {final}") and "<<" not in rec.completion  # calculator annotations stripped
    assert all(r.completion for r in train)  # real data keeps all of its worked solutions


def _tiny_gpt2(path):
    """A different architecture and tokenizer family than the default (GPT-2 byte-level BPE, no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    chars = sorted(set("".join(chr(i) for i in range(32, 127)) + "\n"))
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                                       eos_token_id=0, bos_token_id=0))
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_any_hf_causal_lm_goes_through_sft_ppo_and_evaluate(tmp_path):
    from reftflow.data.synthetic import generate
    from reftflow.evaluation import evaluate_model
    from reftflow.graders import build_grader
    from reftflow.rl import RLRun
    from reftflow.rl.ppo.trainer import PPOTrainer
    from reftflow.sft import train_sft
    from tests.helpers import rl_config

    _tiny_gpt2(tmp_path / "base")
    records = generate(16, seed=0)
    summary = train_sft(records, ModelConfig(name_or_path=str(tmp_path / "base")), SFTConfig(max_steps=2, batch_size=4),
                        tmp_path / "sft", seed=0)
    assert summary["global_steps"] == 2
    grader = build_grader({"type": "numeric_answer", "name": "n", "input": "{{ sample.output_text }}",
                           "reference": "{{ item.answer }}"})
    with grader:
        cfg = rl_config("ppo", steps=1, questions_per_step=2, samples_per_question=2, max_new_tokens=8,
                        minibatch_size=4, ent_coef=0.01)
        trainer = PPOTrainer(RLRun(tmp_path / "sft", records, cfg, grader, tmp_path / "ppo", 0))
        metrics = list(trainer.train())
        trainer.save()
        assert len(metrics) == 1
        result = evaluate_model(tmp_path / "ppo", records[:4], grader, max_new_tokens=8, batch_size=4, label="ppo")
    assert result.metrics["samples"] == 4.0 and len(result.rows) == 4
