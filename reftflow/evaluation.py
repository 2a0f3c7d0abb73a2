"""Held-out evaluation: greedy decoding on the val set, scored by the configured grader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reftflow.data.records import Record
from reftflow.graders.base import FULL_MARKS
from reftflow.prompting import render_prompt


@dataclass
class EvalResult:
    metrics: dict[str, float]
    rows: list[dict]
    """per-sample predictions: model, id, the prompt as the model saw it, output, score, sub-scores, error."""


def evaluate_model(model_dir: str | Path, records: list[Record], grader, max_new_tokens: int, batch_size: int,
                   label: str, pass_threshold: float = FULL_MARKS) -> EvalResult:
    """Greedy decoding graded: the mean score, and the pass rate (the share of answers scoring at least
    `pass_threshold`; at full marks, what a numeric task calls accuracy)."""
    from reftflow.generation import generate_greedy
    from reftflow.modeling import load_model, select_device

    model, tok = load_model(model_dir)
    model.to(select_device())  # the GPU when there is one
    prompts = [render_prompt(r, tok) for r in records]
    outputs = generate_greedy(model, tok, prompts, max_new_tokens, batch_size)
    results = grader.grade_many(outputs, [r.item for r in records])
    rows = [
        {"model": label, "id": r.id, "prompt": prompt, "output": out, "score": res.score,
         "sub_scores": res.sub_scores, "error": res.error}
        for r, prompt, out, res in zip(records, prompts, outputs, results)
    ]
    n = max(len(rows), 1)
    metrics = {
        "pass_rate": sum(1 for row in rows if row["score"] >= min(pass_threshold, FULL_MARKS)) / n,
        "mean_score": sum(row["score"] for row in rows) / n,
        "grader_errors": float(sum(1 for row, res in zip(rows, results) if row["error"] and not res.parse_error)),
        "parse_errors": float(sum(1 for res in results if res.parse_error)),
        "samples": float(len(rows)),
    }
    return EvalResult(metrics, rows)
