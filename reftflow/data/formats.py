"""Loaders that normalise real data sets to `Record`s, with line-numbered errors.

GSM8K (Cobbe et al., 2021): `{"question": ..., "answer": "<worked solution> #### N"}`, where the
solution carries calculator annotations `<<a*b=c>>` that we strip. An answer that is only a number
(or only `#### N`) makes an answer-only item: usable by RL and evaluation, not by SFT.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from reftflow.answers import extract_answer, format_number, parse_number
from reftflow.data.records import DataError, Record, iter_jsonl

_CALC = re.compile(r"<<[^>]*>>")


def normalise_gsm8k(obj: dict[str, Any], rid: str, where: str) -> Record:
    """One GSM8K-style object → Record. `where` ('file:line') prefixes any error."""
    for key in ("question", "answer"):
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
    question, answer = obj["question"], obj["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise DataError(f"{where}: field 'answer' must be a string ending in '#### N' or a number")
    final = extract_answer(answer, "gsm8k")
    if final is None:
        if parse_number(answer) is None:
            raise DataError(f"{where}: field 'answer' has no final answer ('#### N') and is not a number")
        final, reasoning = answer, None
    else:
        reasoning = _CALC.sub("", answer[: answer.rfind("####")]).strip() or None
    value = parse_number(final)
    if value is None:
        raise DataError(f"{where}: final answer {final!r} is not a number")
    return Record(id=str(obj.get("id", rid)), question=question.strip(), answer=format_number(value),
                  reasoning=reasoning)


def load_gsm8k_jsonl(path: str | Path, prefix: str = "") -> list[Record]:
    path = Path(path)
    stem = prefix or path.stem
    return [normalise_gsm8k(obj, f"{stem}-{lineno}", f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def load_hf_dataset(name: str, config: str | None, split: str) -> list[Record]:
    """A Hugging Face dataset with GSM8K columns (question/answer); local or cached unless online."""
    from datasets import load_dataset  # heavy import, only when this source is used

    try:
        ds = load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; one clear line for the user
        raise DataError(f"data.hf_name={name!r}: cannot load split {split!r} ({type(e).__name__}: {e})") from None
    return [normalise_gsm8k(row, f"{split}-{i}", f"{name}[{split}][{i}]") for i, row in enumerate(ds)]


def question_key(question: str) -> str:
    """What makes two questions the same for dedupe and leakage checks: case and spacing ignored."""
    return " ".join(question.lower().split())


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    seen: set[str] = set()
    out, dropped = [], 0
    for r in records:
        key = question_key(r.question)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        out.append(r)
    return out, dropped
