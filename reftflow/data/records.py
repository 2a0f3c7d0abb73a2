"""The one record shape every stage reads, and JSONL I/O with atomic writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from reftflow.errors import InputError
from reftflow.io import atomic_write_text


class DataError(InputError):
    """Bad input data: the message is one line naming the file and line."""


@dataclass(frozen=True)
class Record:
    id: str
    question: str
    answer: str
    """the final answer as text, e.g. '14' (what a grader's reference template usually names)."""
    reasoning: str | None = None
    """a worked solution (`a+b=c.` steps) when the source has one; None for answer-only items."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def write_jsonl(path: str | Path, rows: Iterable[dict | Record]) -> None:
    lines = [r.to_json() if isinstance(r, Record) else json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a broken line is a one-line DataError."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_records(path: str | Path) -> list[Record]:
    out = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(Record(id=str(obj["id"]), question=obj["question"], answer=str(obj["answer"]),
                              reasoning=obj.get("reasoning")))
        except KeyError as e:
            raise DataError(f"{path}:{lineno}: missing field {e.args[0]!r}") from None
    return out
