"""Loaders that normalise real data sets to `Record`s, with errors that name the file and line.

Three formats (docs/data.md has examples of each):

- OpenAI RFT JSONL: one object per line, `messages` (the chat, ending with the user's turn) plus any
  reference fields the grader reads (`{{ item.<field> }}`). Answer-only: no reference completion.
- ReFT JSON (Luong et al., 2024, the ReFT repository's `data/*.json`): a JSON array of
  `{item_id, question, answer_cot?, answer_value}`; `answer_cot` is the worked solution, prose or a
  Python program (P-CoT), and becomes the reference completion.
- GSM8K JSONL (Cobbe et al., 2021): `{"question": ..., "answer": "<worked solution> #### N"}`, where
  the solution carries calculator annotations `<<a*b=c>>` that we strip. An answer that is only a
  number (or only `#### N`) makes an answer-only item: usable by RL and evaluation, not by SFT.

Plus the OpenAI chat SFT JSONL of `data.sft_path`: `messages` ending with the assistant's reply, which
becomes the reference completion of an extra SFT example.

Every object keeps all its fields as the record's `item`, so graders can read any of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from reftflow.answers import extract_answer, format_number, parse_number
from reftflow.data.records import DataError, Record, json_type, jsonl_objects
from reftflow.prompting import message_text

FORMATS = ("auto", "openai", "reft", "gsm8k")
"""`data.format`'s values: auto detects the format from the file's content."""

ROLES = ("system", "developer", "user", "assistant")
"""The chat roles a prompt may use (tool turns are not supported: the model never calls tools)."""

_CALC = re.compile(r"<<[^>]*>>")
_BOM = b"\xef\xbb\xbf"


# --- reading files ------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    """The file as text, or a one-line DataError: unreadable, not UTF-8 (naming the line), empty."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if data.startswith(_BOM):  # editors on Windows add one; it is not part of the JSON
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                        "save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: no items (the file is empty)")
    return text


_NOT_JSON = object()


def _whole_json(text: str) -> Any:
    """The text parsed as one JSON value, or `_NOT_JSON` when it is not one (JSONL, broken JSON)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _NOT_JSON


def _jsonl_objects(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, as `records.iter_jsonl` gives them, but over text
    already read: `_read_text` has named a non-UTF-8 line and dropped a byte-order mark first."""
    if text.lstrip().startswith("[") and isinstance(_whole_json(text), list):
        raise DataError(f"{path}: holds a JSON array (the ReFT format), not JSONL with one object per line; "
                        "set data.format to reft or auto")
    yield from jsonl_objects(path, text.split("\n"))


def _json_array(path: Path, text: str) -> list[dict[str, Any]]:
    """The elements of a ReFT file: a JSON array of objects."""
    if not text.lstrip().startswith("["):
        raise DataError(f"{path}: the ReFT format expects a JSON array of items ([{{...}}, ...]), "
                        "but the file does not start with '['")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    for index, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise DataError(f"{path}[{index}]: expected a JSON object, got {json_type(obj)}")
    return items


# --- detection ----------------------------------------------------------------------------------

def _format_of(obj: dict[str, Any], where: str) -> str:
    """The format an object's keys say it is in; `where` ('file:line') prefixes the error."""
    if "messages" in obj:
        return "openai"
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    if "question" in obj and "answer_value" in obj:
        return "reft"
    raise DataError(f"{where}: cannot tell the format: expected a 'messages' key (OpenAI RFT), 'question' and "
                    f"'answer' (GSM8K) or 'question' and 'answer_value' (ReFT), got keys {sorted(obj)}")


def _detect(path: Path, text: str) -> str:
    # A .json file is a ReFT array even when it is broken (the ReFT loader then names the line);
    # any other file is one only if it parses as an array.
    starts_array = text.lstrip().startswith("[")
    if starts_array and path.suffix == ".json":
        return "reft"
    whole = _whole_json(text) if starts_array or path.suffix == ".json" else _NOT_JSON
    if isinstance(whole, list):
        return "reft"
    if whole is not _NOT_JSON:  # a .json file of one object, string or number
        raise DataError(f"{path}: a .json data file must hold a JSON array of items (the ReFT format), got "
                        f"{json_type(whole)}; a file of one object per line (JSONL) is named .jsonl")
    lineno, obj = next(_jsonl_objects(path, text))
    fmt = _format_of(obj, f"{path}:{lineno}")
    if fmt == "reft":
        raise DataError(f"{path}:{lineno}: ReFT items (question, answer_value) go in a JSON array (a .json file), "
                        "not one per line")
    return fmt


def detect_format(path: str | Path) -> str:
    """'reft' for a JSON array; for JSONL, from the first object: 'openai' (has `messages`) or
    'gsm8k' (has `question` and `answer`). Anything else is a DataError naming `file:line`."""
    path = Path(path)
    return _detect(path, _read_text(path))


# --- one object → Record ------------------------------------------------------------------------

def _own_id(obj: dict[str, Any], key: str, default: str, where: str) -> str:
    """The object's own id (`key`) as text, else `default` (file stem and line or index)."""
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {key!r} must be a string or an integer, got {json_type(value)}")
    return str(value)


def _check_content(content: Any, at: str) -> None:
    """A message's content: a string, or OpenAI content parts of type text (the model reads text only)."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise DataError(f"{at}: 'content' must be a string or a list of content parts, got {json_type(content)}")
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type", "text") != "text":
            raise DataError(f"{at}: content[{j}] has type {part['type']!r}: only text parts are supported")
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise DataError(f"{at}: content[{j}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}}")


def _check_message(message: Any, at: str) -> None:
    if not isinstance(message, dict):
        raise DataError(f"{at}: expected an object with 'role' and 'content', got {json_type(message)}")
    for key in ("role", "content"):
        if key not in message:
            raise DataError(f"{at}: missing {key!r}")
    role = message["role"]
    if role not in ROLES:
        hint = " (tool use is not supported)" if role == "tool" else ""
        raise DataError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}{hint}")
    _check_content(message["content"], at)


def _chat(obj: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The validated `messages` of an OpenAI-style object (RFT or SFT)."""
    if "tools" in obj:
        raise DataError(f"{where}: 'tools' is reserved: tool use is not supported; remove the key")
    if "messages" not in obj:
        raise DataError(f"{where}: missing field 'messages' (the chat: a list of {{\"role\", \"content\"}} objects)")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list, got "
                        f"{'an empty list' if messages == [] else json_type(messages)}")
    for i, message in enumerate(messages):
        _check_message(message, f"{where}: messages[{i}]")
    return messages


def normalise_openai(obj: dict[str, Any], rid: str, where: str) -> Record:
    """One OpenAI RFT object → an answer-only Record whose prompt is its messages; every other key
    (the references graders read) stays in the item. `where` ('file:line') prefixes any error."""
    messages = _chat(obj, where)
    last = messages[-1]["role"]
    if last != "user":
        hint = "; a worked example ending in the assistant's reply belongs in data.sft_path" \
            if last == "assistant" else ""
        raise DataError(f"{where}: the last message must be from the user (the prompt the model answers), "
                        f"got {last!r}{hint}")
    return Record(id=_own_id(obj, "id", rid, where), item=obj, messages=messages)


def normalise_sft(obj: dict[str, Any], rid: str, where: str) -> Record:
    """One OpenAI chat SFT object → a Record whose prompt is every message but the last and whose
    completion is the last, the assistant's reply (its text as written: SFT imitates it exactly)."""
    messages = _chat(obj, where)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's reply (what SFT learns), got "
                        f"{messages[-1]['role']!r}; an item without a reply belongs in data.path")
    if len(messages) < 2 or messages[-2]["role"] != "user":
        got = repr(messages[-2]["role"]) if len(messages) >= 2 else "nothing"
        raise DataError(f"{where}: the message before the assistant's reply must be from the user, got {got}")
    completion = message_text(messages[-1])
    if not completion.strip():
        raise DataError(f"{where}: the assistant's reply is empty")
    return Record(id=_own_id(obj, "id", rid, where), item=obj, messages=messages[:-1], completion=completion)


def _answer_text(value: int | float | str) -> str:
    return format_number(value) if isinstance(value, (int, float)) else value.strip()


def normalise_reft(obj: dict[str, Any], rid: str, where: str) -> Record:
    """One ReFT object → Record: the object unchanged is the item (a grader reads
    `{{ item.answer_value }}`); `answer_cot`, when present, is the completion, ending in `#### <answer>`
    so that the default extraction finds the answer (for a P-CoT program that suffix is a comment)."""
    for key in ("question", "answer_value"):
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
    question, value, cot = obj["question"], obj["answer_value"], obj.get("answer_cot")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: field 'answer_value' must be a number or a string, got {json_type(value)}")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: field 'answer_value' is empty")
    if cot is not None and not isinstance(cot, str):
        raise DataError(f"{where}: field 'answer_cot' must be a string, got {json_type(cot)}")
    completion = None
    if cot and cot.strip():
        cot = cot.strip()
        completion = f" {cot}" if "####" in cot else f" {cot} #### {_answer_text(value)}"
    return Record(id=_own_id(obj, "item_id", rid, where), item=obj, completion=completion)


def normalise_gsm8k(obj: dict[str, Any], rid: str, where: str) -> Record:
    """One GSM8K-style object → Record: the object itself is the item (graders see every field; the
    numeric grader reads the final answer after `####` in `{{ item.answer }}`), the worked solution
    without calculator annotations is the completion. `where` ('file:line') prefixes any error."""
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
    item = {**obj, "id": str(obj.get("id", rid)), "question": question.strip()}
    completion = f" {reasoning} #### {format_number(value)}" if reasoning else None
    return Record(id=item["id"], item=item, completion=completion)


Normaliser = Callable[[dict[str, Any], str, str], Record]
NORMALISERS: dict[str, Normaliser] = {"openai": normalise_openai, "reft": normalise_reft, "gsm8k": normalise_gsm8k}
"""format → (object, default id, where) → Record."""


# --- whole sources ------------------------------------------------------------------------------

def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r}: expected one of {', '.join(FORMATS)}")


def load_data_file(path: str | Path, fmt: str = "auto", prefix: str = "") -> list[Record]:
    """The items of a data file in `fmt` (auto: `detect_format`). Ids are the items' own (`id`, or
    `item_id` for ReFT), else `<prefix or file stem>-<line>` (JSONL) or `-<index>` (ReFT, from 0)."""
    _check_format(fmt)
    path = Path(path)
    text = _read_text(path)
    fmt = _detect(path, text) if fmt == "auto" else fmt
    stem = prefix or path.stem
    if fmt == "reft":
        records = [normalise_reft(obj, f"{stem}-{i}", f"{path}[{i}]") for i, obj in enumerate(_json_array(path, text))]
    else:
        normalise = NORMALISERS[fmt]
        records = [normalise(obj, f"{stem}-{n}", f"{path}:{n}") for n, obj in _jsonl_objects(path, text)]
    if not records:
        raise DataError(f"{path}: no items (an empty array)")
    return records


def load_sft_file(path: str | Path, prefix: str = "") -> list[Record]:
    """The worked examples of an OpenAI chat SFT JSONL (`data.sft_path`): one `messages` per line,
    ending with the user's turn and then the assistant's reply."""
    path = Path(path)
    stem = prefix or path.stem
    return [normalise_sft(obj, f"{stem}-{n}", f"{path}:{n}") for n, obj in _jsonl_objects(path, _read_text(path))]


def _rename_columns(ds: Any, columns: dict[str, str], name: str) -> Any:
    missing = [old for old in columns if old not in ds.column_names]
    if missing:
        raise DataError(f"data.hf_columns: dataset {name!r} has no column {missing[0]!r} "
                        f"(its columns: {', '.join(ds.column_names)})")
    try:
        return ds.rename_columns(columns)
    except ValueError as e:  # e.g. a new name that is already a column
        raise DataError(f"data.hf_columns: {' '.join(str(e).split())}") from None


def load_hf_dataset(name: str, config: str | None, split: str, columns: dict[str, str] | None = None,
                    fmt: str = "auto") -> list[Record]:
    """A Hugging Face dataset (a hub name, cached unless online, or a local directory of data files)
    whose rows, after renaming `columns` ({old: new}), are objects of `fmt` (auto: by the first row's
    keys, as `detect_format` does for a line). Errors name the row: `name[split][i]`."""
    from datasets import load_dataset  # heavy import, only when this source is used

    _check_format(fmt)
    try:
        ds = load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; one clear line for the user
        detail = " ".join(str(e).split())
        raise DataError(f"data.hf_name={name!r}: cannot load split {split!r} ({type(e).__name__}: {detail})") from None
    if columns:
        ds = _rename_columns(ds, columns, name)
    rows: list[dict[str, Any]] = [dict(row) for row in ds]
    if not rows:
        raise DataError(f"{name}[{split}]: no items")
    fmt = _format_of(rows[0], f"{name}[{split}][0]") if fmt == "auto" else fmt
    normalise = NORMALISERS[fmt]
    return [normalise(row, f"{split}-{i}", f"{name}[{split}][{i}]") for i, row in enumerate(rows)]


# --- dedupe -------------------------------------------------------------------------------------

def prompt_key(record: Record) -> str:
    """What makes two items the same for dedupe and leakage checks: the same prompt, case and spacing
    ignored (the rendered text, or the messages)."""
    from reftflow.prompting import render_prompt

    return " ".join(render_prompt(record).lower().split())


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    seen: set[str] = set()
    out, dropped = [], 0
    for r in records:
        key = prompt_key(r)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        out.append(r)
    return out, dropped
