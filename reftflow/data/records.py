"""The one record shape every stage reads, and JSONL I/O with atomic writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from reftflow.errors import InputError
from reftflow.io import atomic_write_text


class DataError(InputError):
    """Bad input data: the message is one line naming the file and line."""


@dataclass(frozen=True)
class Record:
    """One task item as every stage reads it.

    `item` is the source object with all its fields: graders see it as `{{ item.<field> }}`, nested
    paths included. The prompt is either `messages` (a chat: system/developer/user/assistant turns,
    the last from the user; rendered through the tokenizer's chat template when it has one) or
    `prompt` (text, a template over the item's fields applied at prepare time). `completion` is the
    reference answer SFT imitates; None makes an answer-only item that RL and evaluation still use.
    """

    id: str
    item: dict[str, Any]
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    completion: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Record:
        return cls(id=str(obj["id"]), item=obj["item"], prompt=obj.get("prompt"), messages=obj.get("messages"),
                   completion=obj.get("completion"))


def common_fields(records: Iterable[Record]) -> set[str]:
    """The item fields every record has: what a grader template may name without failing on some."""
    fields: set[str] | None = None
    for r in records:
        fields = set(r.item) if fields is None else fields & set(r.item)
    return fields or set()


def write_jsonl(path: str | Path, rows: Iterable[dict | Record]) -> None:
    lines = [r.to_json() if isinstance(r, Record) else json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def json_type(value: Any) -> str:
    """JSON's name for a value's type, for messages a user reads next to their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def jsonl_objects(path: str | Path, lines: Iterable[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path`; a broken line is a one-line DataError."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {json_type(obj)}")
        yield lineno, obj


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        yield from jsonl_objects(path, f)


def read_records(path: str | Path) -> list[Record]:
    """Records written by `write_jsonl` (the prepare stage's output)."""
    out = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(Record.from_json(obj))
        except KeyError as e:
            raise DataError(f"{path}:{lineno}: missing field {e.args[0]!r} (not a prepared record)") from None
    return out
