"""Any grader as a TRL reward function: `f(prompts, completions, **columns) -> list[float]`.

TRL's GRPOTrainer calls reward functions with the prompts, the completions (strings, or chat message lists
in conversational datasets) and every other dataset column as a list with one value per completion
(trl/trainer/grpo_trainer.py `_calculate_rewards`); it also passes trainer_state, log_extra, log_metric and
completion_ids, which are not item fields. The item a grader template sees is rebuilt from those columns,
or read from the `item_json` column when there is one (reftflow's GRPO passes items that way).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from reftflow.graders.base import FULL_MARKS, Grader

_NOT_COLUMNS = frozenset({"trainer_state", "log_extra", "log_metric", "completion_ids", "environments"})
ITEM_COLUMN = "item_json"
"""a dataset column holding each item as JSON: when present, it is the item graders see."""


def completion_text(completion: Any) -> str:
    """A completion as text: a string as is; a chat list → the last assistant message's text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        if assistant:
            content = assistant[-1].get("content", "")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return "" if content is None else str(content)
    return "" if completion is None else str(completion)


def as_reward_function(grader: Grader, name: str | None = None) -> Callable[..., list[float]]:
    def reward(prompts: list | None = None, completions: list | None = None, **columns: Any) -> list[float]:
        texts = [completion_text(c) for c in (completions or [])]
        n = len(texts)
        per_sample = {
            k: v for k, v in columns.items() if k not in _NOT_COLUMNS and isinstance(v, (list, tuple)) and len(v) == n
        }
        if ITEM_COLUMN in per_sample:
            items = [json.loads(text) for text in per_sample[ITEM_COLUMN]]
        else:
            items = [{k: v[i] for k, v in per_sample.items()} for i in range(n)]
        results = grader.grade_many(texts, items)
        log_metric = columns.get("log_metric")
        if callable(log_metric) and n:
            errors = sum(r.error is not None for r in results)
            log_metric(f"{reward.__name__}/error_rate", errors / n)
            log_metric(f"{reward.__name__}/accuracy", sum(r.score >= FULL_MARKS for r in results) / n)
        return [r.score for r in results]

    reward.__name__ = reward.__qualname__ = name or grader.name
    return reward
