"""Build the train/val splits from the configured source: load, render prompts, dedupe, refuse
leakage, split (and the extra SFT examples of `data.sft_path`)."""

from __future__ import annotations

import dataclasses
import random

from reftflow.config import DataConfig
from reftflow.data import genes
from reftflow.data.formats import dedupe, load_data_file, load_hf_dataset, load_sft_file, prompt_key
from reftflow.data.records import DataError, Record
from reftflow.data.synthetic import generate


def _load(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record] | None]:
    if cfg.source == "synthetic" and cfg.task == "genes":
        return genes.generate(cfg.num_train + cfg.num_val, seed), None
    if cfg.source == "synthetic":
        return generate(cfg.num_train + cfg.num_val, seed, cfg.min_ops, cfg.max_ops, cfg.max_operand), None
    if cfg.source in ("file", "jsonl"):
        val = load_data_file(cfg.val_path, cfg.format, prefix="val") if cfg.val_path else None
        return load_data_file(cfg.path, cfg.format, prefix="train"), val
    return load_hf_dataset(cfg.hf_name, cfg.hf_config, cfg.hf_split, cfg.hf_columns, cfg.format), None


def with_prompts(records: list[Record], template: str, chat: bool = False, system: str | None = None) -> list[Record]:
    """Records whose prompt is neither messages nor text get `template` over their item's fields: as text,
    or with `chat` as a user message (after a `system` one), which the model's chat template renders.
    A chat's reference completion loses the leading space a `Q: ... A:` prompt wants."""
    from reftflow.prompting import apply_template
    from reftflow.templates import MissingField

    out = []
    for r in records:
        if r.messages is None and r.prompt is None:
            try:
                text = apply_template(template, r.item)
            except (MissingField, ValueError) as e:
                raise DataError(f"data.prompt_template: item {r.id!r}: {e}") from None
            if chat:
                turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
                completion = r.completion.lstrip() if r.completion else r.completion
                r = dataclasses.replace(r, messages=turns, completion=completion)
            else:
                r = dataclasses.replace(r, prompt=text)
        out.append(r)
    return out


def _keep_worked_fraction(train: list[Record], fraction: float, rng: random.Random) -> list[Record]:
    """Synthetic tasks only: keep the worked solution on a seeded subset (the realistic RFT setting:
    SFT learns from worked items, RL from every question); real data keeps all of its own. An item
    that carries its worked steps as a field (the arithmetic task's `reasoning`) loses them too."""
    worked = {r.id for r in train if r.completion}
    keep = set(rng.sample(sorted(worked), round(fraction * len(worked)))) if worked else set()

    def answer_only(r: Record) -> Record:
        item = {**r.item, "reasoning": None} if "reasoning" in r.item else r.item
        return dataclasses.replace(r, completion=None, item=item)

    return [r if r.id in keep else answer_only(r) for r in train]


def build_splits(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record], dict[str, float]]:
    """(train, val, report). Val is split off by seed unless a separate val file is given;
    a train item whose prompt also appears in val is dropped (leakage), and counted in the report."""
    rng = random.Random(seed)
    pool, val = _load(cfg, seed)
    pool, dup_train = dedupe(with_prompts(pool, cfg.prompt_template, cfg.chat, cfg.system_prompt))
    dup_val = 0
    if val is None:
        if len(pool) < cfg.num_val + 1:
            raise DataError(f"data: {len(pool)} unique items, need more than data.num_val={cfg.num_val}")
        rng.shuffle(pool)
        val, pool = pool[: cfg.num_val], pool[cfg.num_val :]
    else:
        val, dup_val = dedupe(with_prompts(val, cfg.prompt_template, cfg.chat, cfg.system_prompt))
        val = val[: cfg.num_val]
    val_keys = {prompt_key(r) for r in val}
    train = [r for r in pool if prompt_key(r) not in val_keys]
    leaked = len(pool) - len(train)
    train = train[: cfg.num_train]
    if not train:
        raise DataError("data: no training items left after dedupe and leakage removal")
    if cfg.source == "synthetic":
        train = _keep_worked_fraction(train, cfg.worked_fraction, rng)
    report = {
        "train_items": len(train),
        "val_items": len(val),
        "train_worked": sum(1 for r in train if r.completion),
        "train_answer_only": sum(1 for r in train if not r.completion),
        "duplicates_dropped": dup_train + dup_val,
        "leaked_dropped": leaked,
    }
    return train, val, report


def sft_examples(cfg: DataConfig) -> list[Record]:
    """The extra worked examples of `data.sft_path` (OpenAI chat SFT JSONL), or none."""
    return load_sft_file(cfg.sft_path) if cfg.sft_path else []
