"""Model and tokenizer factory: the tiny built-in Llama + character tokenizer, or any HF causal LM."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from reftflow.config import ModelConfig

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
# Printable ASCII plus newline: every character the synthetic task and GSM8K use.
CHARSET = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


def build_char_tokenizer():
    """A character-level tokenizer saved and loaded as a normal `PreTrainedTokenizerFast`.

    BPE with an empty merge list splits text into single characters; `decoders.Fuse` joins them
    back without spaces, so decode(encode(s)) == s for every character in CHARSET.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARSET)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"  # generation appends on the right
    return tok


def build_tiny_model(cfg: ModelConfig, tokenizer, seed: int):
    """A small Llama-style causal LM initialised from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def init_model(cfg: ModelConfig, seed: int):
    """(model, tokenizer) to warm up: the tiny default, or `cfg.name_or_path` from HF."""
    if cfg.name_or_path is None:
        tok = build_char_tokenizer()
        return build_tiny_model(cfg, tok, seed), tok
    return load_model(cfg.name_or_path)


def load_model(path: str | Path):
    """(model, tokenizer) from a HF name or directory, with a pad token and left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def set_threads(n: int) -> None:
    """Deliberate torch thread count: two torch processes on 2 cores slow each other 4-7x."""
    if n > 0:
        torch.set_num_threads(n)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_trained(trainer, tokenizer, out_dir: str | Path) -> None:
    """A HF Trainer's model + tokenizer → a normal model dir, written beside `out_dir` then renamed."""
    from reftflow.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        trainer.save_model(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)  # trainer state, not part of the model
        tokenizer.save_pretrained(str(tmp))


def save_new_model(path: str | Path, cfg: ModelConfig, seed: int = 0):
    """The base model of `cfg` (the tiny default built from its config, or `cfg.name_or_path`) saved
    untrained as a normal HF dir, atomically; returns the model."""
    from reftflow.io import atomic_dir

    model, tok = init_model(cfg, seed)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return model
