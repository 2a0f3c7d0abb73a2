"""Held-out evaluation: greedy decoding on the val set, scored by the configured grader, with 95 %
bootstrap intervals; optionally k sampled answers per item for pass@k and maj@k (`reftflow.stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reftflow import stats
from reftflow.config import ModelConfig
from reftflow.data.records import Record
from reftflow.graders.base import FULL_MARKS
from reftflow.prompting import render_prompt


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict]
    """per-item predictions: model, id, the prompt as the model saw it, output, score, sub-scores, error
    (and, with sampled evaluation, the k sampled outputs, their scores and the majority's)."""
    passed: list[float] = field(default_factory=list)
    """per item, 1.0 when the greedy answer passed: what the paired gain resamples."""
    threshold: float = FULL_MARKS
    """the score at which an answer passes (`evaluate.pass_threshold`, at most full marks)."""

    @property
    def scores(self) -> list[float]:
        return [row["score"] for row in self.rows]


@dataclass(frozen=True)
class Sampling:
    """Sampled evaluation (`evaluate.samples_per_item`): k answers per item at `temperature`, seeded."""

    k: int
    temperature: float = 1.0
    seed: int = 0


def with_interval(name: str, values: list[float], seed: int = 0) -> dict[str, float]:
    """`name` (the mean of per-item values) and its 95 % bootstrap interval, `name_low` and `name_high`."""
    low, high = stats.mean_ci(values, seed=seed)
    return {name: sum(values) / max(len(values), 1), f"{name}_low": low, f"{name}_high": high}


def evaluate_model(model_dir: str | Path, records: list[Record], grader, max_new_tokens: int, batch_size: int,
                   label: str, pass_threshold: float = FULL_MARKS, model_cfg: ModelConfig | None = None,
                   sampling: Sampling | None = None) -> EvalResult:
    """Greedy decoding graded: the mean score, and the pass rate (the share of answers scoring at least
    `pass_threshold`; at full marks, what a numeric task calls accuracy), each with its interval.
    `model_cfg`: the device, threads and precision (`model.*`; None: the defaults). `sampling`: also pass@k
    and maj@k over k sampled answers per item."""
    from reftflow.generation import generate_greedy
    from reftflow.modeling import device_and_precision, load_model

    device, bf16 = device_and_precision(model_cfg or ModelConfig())
    model, tok = load_model(model_dir)
    model.to(device)
    prompts = [render_prompt(r, tok) for r in records]
    outputs = generate_greedy(model, tok, prompts, max_new_tokens, batch_size, bf16=bf16)
    results = grader.grade_many(outputs, [r.item for r in records])
    rows = [
        {"model": label, "id": r.id, "prompt": prompt, "output": out, "score": res.score,
         "sub_scores": res.sub_scores, "error": res.error}
        for r, prompt, out, res in zip(records, prompts, outputs, results)
    ]
    threshold = min(pass_threshold, FULL_MARKS)
    passed = [float(row["score"] >= threshold) for row in rows]
    metrics = {
        **with_interval("pass_rate", passed),
        **with_interval("mean_score", [row["score"] for row in rows]),
        "grader_errors": float(sum(1 for row, res in zip(rows, results) if row["error"] and not res.parse_error)),
        "parse_errors": float(sum(1 for res in results if res.parse_error)),
        "samples": float(len(rows)),
    }
    if sampling is not None and sampling.k > 0 and records:
        metrics.update(_sampled(model, tok, prompts, records, rows, grader, threshold, max_new_tokens, sampling,
                                device, bf16))
    return EvalResult(metrics, rows, passed, threshold)


def _sampled(model, tok, prompts, records, rows, grader, threshold, max_new_tokens, sampling: Sampling, device,
             bf16: bool) -> dict[str, float]:
    """k sampled answers per item: the sampled pass rate (pass@1), pass@k and maj@k, each with its interval;
    each row gets its samples, their scores and the majority's answer."""
    import torch

    from reftflow.generation import sample
    from reftflow.precision import autocast

    k, per_batch = sampling.k, max(1, 64 // sampling.k)
    tokens = tok(prompts)["input_ids"]
    pass1, pass_k, maj_k = [], [], []
    for start in range(0, len(records), per_batch):
        chunk = range(start, min(start + per_batch, len(records)))
        torch.manual_seed(stats_seed(sampling.seed, start))
        with torch.no_grad(), autocast(device, bf16):
            ro = sample(model, tok, [tokens[i] for i in chunk for _ in range(k)], max_new_tokens, sampling.temperature,
                        group_size=k)
        items = [records[i].item for i in chunk for _ in range(k)]
        results = grader.grade_many(ro.texts, items)
        for j, i in enumerate(chunk):
            group = results[j * k:(j + 1) * k]
            texts = ro.texts[j * k:(j + 1) * k]
            ok = [r.score >= threshold for r in group]
            winner = stats.majority([grader.answer_key(t, records[i].item) for t in texts])
            pass1.append(sum(ok) / k)
            pass_k.append(stats.pass_at_k(k, sum(ok), k))
            maj_k.append(float(winner is not None and ok[winner]))
            rows[i].update(samples=texts, sample_scores=[r.score for r in group],
                           majority=texts[winner] if winner is not None else None)
    return {**with_interval("sampled_pass_rate", pass1), **with_interval(f"pass_at_{k}", pass_k),
            **with_interval(f"maj_at_{k}", maj_k), "samples_per_item": float(k)}


def stats_seed(seed: int, start: int) -> int:
    """The sampling seed of the batch starting at item `start`: a rerun draws the same answers."""
    return seed * 1_000_003 + start


def gain(before: EvalResult, after: EvalResult) -> dict[str, float]:
    """The gain of `after` over `before` on the same items: the pass-rate and mean-score differences, each
    with its paired 95 % bootstrap interval, and the number of items."""
    if [r["id"] for r in before.rows] != [r["id"] for r in after.rows]:
        raise ValueError("a paired gain needs both models graded on the same items in the same order")
    out = {"items": float(len(before.rows))}
    for name, a, b in (("pass_rate", before.passed, after.passed), ("mean_score", before.scores, after.scores)):
        diff, low, high = stats.paired_diff_ci(a, b)
        out.update({name: diff, f"{name}_low": low, f"{name}_high": high})
    return out
