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


def init_model(cfg: ModelConfig, seed: int, base_dir: str | Path | None = None):
    """(model, tokenizer) to warm up: what the `base` stage left in `base_dir` (models/base), else the
    tiny default built from `cfg`, else `cfg.name_or_path` read directly (a GGUF converted on the fly)."""
    from reftflow import base_model

    location = base_model.loadable(base_dir) if base_dir is not None else None
    if location is not None:
        return load_model(location)
    source = base_model.resolve(cfg.name_or_path)
    if source.kind == "tiny":
        tok = build_char_tokenizer()
        return build_tiny_model(cfg, tok, seed), tok
    if source.kind == "gguf":
        return _with_padding(*base_model.load_gguf(source.location))
    return load_model(source.location)


def _with_padding(model, tok):
    """A pad token (the EOS when the model has none: masks, not token ids, say what is padding) and left
    padding (generation appends on the right)."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_model(path: str | Path):
    """(model, tokenizer) from a HF name or directory, with a pad token and left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return _with_padding(model, tok)


def select_device(name: str = "auto") -> torch.device:
    """`model.device`: auto is the GPU when CUDA sees one, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is cuda, but torch sees no CUDA device (install a CUDA build of torch: "
                         "make TORCH=torch setup), or set model.device: auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def device_and_precision(cfg: ModelConfig) -> tuple[torch.device, bool]:
    """The device a stage trains or generates on (`model.device`), with torch's threads set (`model.torch_threads`),
    and whether it runs under bf16 autocast (`model.bf16`, reftflow/precision.py): every stage asks here."""
    from reftflow.precision import use_bf16

    device = select_device(cfg.device)
    set_threads(cfg.torch_threads, device)
    return device, use_bf16(cfg.bf16, device)


def context_length(cfg: ModelConfig, model) -> int:
    """`model.max_length`, or the model's own context when it is null."""
    if cfg.max_length is not None:
        return cfg.max_length
    return int(getattr(model.config.get_text_config(), "max_position_embeddings", 2048))


def set_threads(n: int, device: torch.device | None = None) -> None:
    """Deliberate torch thread count: two torch processes on 2 cores slow each other 4-7x. On a GPU
    the CPU threads do not matter and are left alone."""
    on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if n > 0 and not on_gpu:
        torch.set_num_threads(n)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_trained(trainer, tokenizer, out_dir: str | Path) -> None:
    """A HF Trainer's model + tokenizer → a normal model dir, written beside `out_dir` then renamed, by the
    main process. Every process calls it: under FSDP the Trainer's save gathers the shards first (a
    collective; transformers' `save_model` then writes on the main process alone)."""
    from reftflow.distributed import is_main_process
    from reftflow.io import atomic_dir

    from reftflow.lora import is_peft, merged

    if not is_main_process():
        if trainer.is_fsdp_enabled:
            trainer.save_model(str(out_dir))  # joins the gather; writes nothing here
        return
    with atomic_dir(out_dir) as tmp:
        if is_peft(trainer.model):  # LoRA: the adapters folded in, a plain model out (reftflow/lora.py)
            merged(trainer.model, in_place=True).save_pretrained(str(tmp))
        else:
            trainer.save_model(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)  # trainer state, not part of the model
        tokenizer.save_pretrained(str(tmp))


def save_new_model(path: str | Path, cfg: ModelConfig, seed: int = 0, base_dir: str | Path | None = None):
    """The base model of `cfg` (see `init_model`) saved untrained as a normal HF dir, atomically;
    returns the model."""
    from reftflow.io import atomic_dir

    model, tok = init_model(cfg, seed, base_dir)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return model
