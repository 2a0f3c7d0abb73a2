"""How a record becomes the text the model sees: the one place prompts are built, for SFT, RL,
evaluation and the registered model.

A record's prompt is its chat `messages` or its `prompt` text (see `Record`). Messages go through the
tokenizer's chat template when it has one, keeping system and developer turns; a tokenizer without
one (the built-in character model) gets a plain `role: content` rendering.
"""

from __future__ import annotations

from typing import Any

from reftflow.data.records import Record

from reftflow.config import DEFAULT_PROMPT_TEMPLATE
PROMPT_KEYS = ("prompt_template", "chat", "system_prompt")
"""the `data` keys that turn an item without messages into a prompt (the registered model keeps them)."""


def apply_template(template: str, item: dict[str, Any]) -> str:
    """`template` with each `{{ item.<path> }}` replaced by that field of `item` (the graders' syntax).

    Raises `reftflow.templates.MissingField` naming the missing field, and TemplateSyntaxError for a
    reference other than `item.<path>`."""
    from reftflow.templates import Template

    return Template(template).render("", item)


def message_text(message: dict[str, Any]) -> str:
    """A message's content as text (OpenAI content parts `[{"type": "text", "text": ...}]` joined)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def render_messages(messages: list[dict[str, Any]], tokenizer=None) -> str:
    """A chat prompt as text, ending where the assistant's answer starts."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        turns = [{"role": m["role"], "content": message_text(m)} for m in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {message_text(m)}\n" for m in messages) + "assistant:"


def count_too_long(tokenizer, texts: list[str], limit: int) -> int:
    """How many of `texts` are longer than `limit` tokens: counted and reported, never cut silently."""
    return sum(len(ids) > limit for ids in tokenizer(list(texts))["input_ids"]) if texts else 0


def render_prompt(record: Record, tokenizer=None) -> str:
    """What the model sees before it answers `record`."""
    if record.messages is not None:
        return render_messages(record.messages, tokenizer)
    if record.prompt is not None:
        return record.prompt
    return apply_template(DEFAULT_PROMPT_TEMPLATE, record.item)
