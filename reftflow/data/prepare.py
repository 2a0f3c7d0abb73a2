"""Build the train/val splits from the configured source: load, normalise, dedupe, refuse leakage, split."""

from __future__ import annotations

import random

from reftflow.config import DataConfig
from reftflow.data.formats import dedupe, load_gsm8k_jsonl, load_hf_dataset, question_key
from reftflow.data.records import DataError, Record
from reftflow.data.synthetic import generate


def _load(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record] | None]:
    if cfg.source == "synthetic":
        return generate(cfg.num_train + cfg.num_val, seed, cfg.min_ops, cfg.max_ops, cfg.max_operand), None
    if cfg.source == "jsonl":
        val = load_gsm8k_jsonl(cfg.val_path, prefix="val") if cfg.val_path else None
        return load_gsm8k_jsonl(cfg.path, prefix="train"), val
    train = load_hf_dataset(cfg.hf_name, cfg.hf_config, cfg.hf_split)
    return train, None


def build_splits(cfg: DataConfig, seed: int) -> tuple[list[Record], list[Record], dict[str, float]]:
    """(train, val, report). Val is split off by seed unless a separate val file is given;
    a train question that also appears in val is dropped (leakage), and counted in the report."""
    rng = random.Random(seed)
    pool, val = _load(cfg, seed)
    pool, dup_train = dedupe(pool)
    dup_val = 0
    if val is None:
        if len(pool) < cfg.num_val + 1:
            raise DataError(f"data: {len(pool)} unique items, need more than data.num_val={cfg.num_val}")
        rng.shuffle(pool)
        val, pool = pool[: cfg.num_val], pool[cfg.num_val :]
    else:
        val, dup_val = dedupe(val)
        val = val[: cfg.num_val]
    val_questions = {question_key(r.question) for r in val}
    train = [r for r in pool if question_key(r.question) not in val_questions]
    leaked = len(pool) - len(train)
    train = train[: cfg.num_train]
    if not train:
        raise DataError("data: no training items left after dedupe and leakage removal")

    # Answer-only items: keep the worked solution on a seeded subset only (the realistic RFT
    # setting; SFT learns from worked items, RL from every question).
    worked = {r.id for r in train if r.reasoning}
    keep = set(rng.sample(sorted(worked), round(cfg.worked_fraction * len(worked)))) if worked else set()
    train = [r if r.id in keep else Record(r.id, r.question, r.answer, None) for r in train]

    report = {
        "train_items": len(train),
        "val_items": len(val),
        "train_worked": sum(1 for r in train if r.reasoning),
        "train_answer_only": sum(1 for r in train if not r.reasoning),
        "duplicates_dropped": dup_train + dup_val,
        "leaked_dropped": leaked,
    }
    return train, val, report
