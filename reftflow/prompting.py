"""The prompt/completion text format shared by SFT, RL, evaluation and the registered model.

Every prompt is built by `prompt_text`: the one place a chat template will plug in.
"""

from __future__ import annotations

from reftflow.data.records import Record


def prompt_text(record: Record) -> str:
    """What the model sees before it answers `record`."""
    return f"Q: {record.question}\nA:"


def completion_text(record: Record) -> str:
    """What SFT imitates: the worked steps, then `#### N` (the grader's gsm8k extraction)."""
    if record.reasoning:
        return f" {record.reasoning} #### {record.answer}"
    return f" #### {record.answer}"


def item_dict(record: Record) -> dict:
    """The `item` a grader template sees: every record field."""
    return {"id": record.id, "question": record.question, "answer": record.answer, "reasoning": record.reasoning}
