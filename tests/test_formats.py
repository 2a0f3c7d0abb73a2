"""Data formats: OpenAI RFT / chat SFT JSONL, ReFT JSON, GSM8K JSONL, HF datasets, `reftflow data check`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from reftflow.config import DataConfig
from reftflow.data.formats import FORMATS, detect_format, load_data_file, load_hf_dataset, load_sft_file
from reftflow.data.records import DataError
from reftflow.graders import build_grader

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "data.md"


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


RFT_OK = {"messages": [user("Capital of France?")], "reference_answer": "Paris"}
SFT_OK = {"messages": [user("Capital of Spain?"), {"role": "assistant", "content": "Madrid"}]}
REFT_OK = {"item_id": "gsm8k_0", "question": "3*4?", "answer_cot": "3*4=12.", "answer_value": 12}
GSM8K_OK = {"question": "ok?", "answer": "#### 1"}


# --- OpenAI RFT -----------------------------------------------------------------------------------

def test_openai_rft_items_keep_every_field_for_graders(tmp_path):
    p = write(tmp_path / "rft.jsonl", jsonl(
        {"messages": [{"role": "system", "content": "One word."}, user("Capital of France?")],
         "reference_answer": "Paris", "meta": {"difficulty": "easy"}},
        {"id": 7, "messages": [{"role": "developer", "content": "Be brief."}, user("2+2?"),
                               {"role": "assistant", "content": "4"},
                               {"role": "user", "content": [{"type": "text", "text": "Capital of "},
                                                            {"type": "text", "text": "Italy?"}]}],
         "reference_answer": "Rome"},
    ))
    a, b = load_data_file(p)
    assert (a.id, b.id) == ("rft-1", "7")  # own id as text, else stem-line
    assert a.item == json.loads(p.read_text().splitlines()[0])  # all keys, messages included
    assert a.messages == a.item["messages"] and a.prompt is None and a.completion is None  # answer-only
    assert b.messages[-1]["role"] == "user"
    grader = build_grader({"type": "string_check", "name": "s", "operation": "eq",
                           "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"})
    assert grader.grade("Paris", a.item).score == 1.0
    assert grader.grade("Rome", a.item).score == 0.0
    nested = build_grader({"type": "string_check", "name": "d", "operation": "eq",
                           "input": "{{ sample.output_text }}", "reference": "{{ item.meta.difficulty }}"})
    assert nested.grade("easy", a.item).score == 1.0


def test_ids_use_the_prefix_when_given(tmp_path):
    p = write(tmp_path / "rft.jsonl", "\n" + jsonl(RFT_OK))  # a blank line still counts
    assert load_data_file(p, prefix="train")[0].id == "train-2"


# --- ReFT -----------------------------------------------------------------------------------------

def test_reft_json_number_letter_and_program_answers(tmp_path):
    program = "def solution():\n    result = 29 * 7\n    return result"
    items = [
        {"item_id": "gsm8k_0", "question": "Tom has 3 bags of 4 apples. How many?",
         "answer_cot": " 3 bags of 4 is 3*4=12 apples.\n", "answer_value": 12},  # a number
        {"item_id": "mathqa_0", "question": "what is 10 % of 50 ?\na ) 5 , b ) 10", "answer_value": "a"},  # a letter
        {"item_id": "svamp_0", "question": "29 species, 7 pairs each: pairs?", "answer_cot": program,
         "answer_value": "203.0"},  # P-CoT
        {"question": "done?", "answer_cot": "So 5. #### 5", "answer_value": 5.0},  # no id; cot has its answer
    ]
    p = write(tmp_path / "reft.json", json.dumps(items, indent=2))
    num, letter, pot, own = load_data_file(p)
    assert [r.id for r in (num, letter, pot, own)] == ["gsm8k_0", "mathqa_0", "svamp_0", "reft-3"]
    assert [r.item for r in (num, letter, pot, own)] == items  # unchanged
    assert num.completion == " 3 bags of 4 is 3*4=12 apples. #### 12"
    assert letter.completion is None and letter.prompt is None  # answer-only; prepare fills the prompt
    assert pot.completion == f" {program} #### 203.0"
    assert own.completion == " So 5. #### 5"
    numeric = build_grader({"type": "numeric_answer", "name": "n", "reference": "{{ item.answer_value }}"})
    assert numeric.grade(num.completion, num.item).score == 1.0
    assert numeric.grade(" 29*7=203 #### 203", pot.item).score == 1.0  # "203.0" as a number


# --- GSM8K ----------------------------------------------------------------------------------------

def test_gsm8k_loader_normalises(tmp_path):
    first = {"question": " Q1? ", "answer": "He has 2*3=<<2*3=6>>6 apples.\n#### 6"}
    second = {"question": "Q2?", "answer": "1,200"}
    p = write(tmp_path / "d.jsonl", json.dumps(first) + "\n\n" + json.dumps(second) + "\n")  # line 2 is blank
    a, b = load_data_file(p)
    assert a.completion == " He has 2*3=6 apples. #### 6"  # calculator annotations stripped
    assert a.item == {**first, "id": "d-1", "question": "Q1?"}  # every field reaches graders
    assert (b.id, b.completion, b.item["answer"]) == ("d-3", None, "1,200")  # answer-only item


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q"}', "d.jsonl:2: missing field 'answer'"),
        ('{"question": "q", "answer": "no number here"}', "d.jsonl:2: field 'answer' has no final answer"),
        ("{not json", "d.jsonl:2: invalid JSON"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object"),
        ('{"question": "", "answer": "#### 1"}', "d.jsonl:2: field 'question' must be a non-empty string"),
    ],
)
def test_gsm8k_loader_errors_name_file_and_line(tmp_path, line, message):
    p = write(tmp_path / "d.jsonl", jsonl(GSM8K_OK) + line + "\n")
    with pytest.raises(DataError) as err:
        load_data_file(p, "gsm8k")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --- SFT ------------------------------------------------------------------------------------------

def test_sft_file_prompt_is_all_but_the_reply(tmp_path):
    reply = {"role": "assistant", "content": [{"type": "text", "text": "Ma"}, {"type": "text", "text": "drid"}]}
    obj = {"messages": [{"role": "system", "content": "One word."}, user("Capital of Spain?"), reply]}
    p = write(tmp_path / "sft.jsonl", jsonl(obj, SFT_OK))
    a, b = load_sft_file(p)
    assert a.messages == obj["messages"][:-1] and a.completion == "Madrid"  # exactly the reply's text
    assert a.item == obj and (a.id, b.id) == ("sft-1", "sft-2")


# --- detection ------------------------------------------------------------------------------------

def test_detect_format(tmp_path):
    assert detect_format(write(tmp_path / "a.jsonl", jsonl(RFT_OK))) == "openai"
    assert detect_format(write(tmp_path / "b.jsonl", "\n" + jsonl(GSM8K_OK))) == "gsm8k"
    assert detect_format(write(tmp_path / "c.json", json.dumps([REFT_OK], indent=2))) == "reft"
    assert detect_format(write(tmp_path / "d.jsonl", json.dumps([REFT_OK]))) == "reft"  # an array, whatever its name
    assert detect_format(write(tmp_path / "e.json", jsonl(RFT_OK, RFT_OK))) == "openai"  # JSONL named .json


def test_a_forced_format_overrides_detection(tmp_path):
    both = {"messages": [user("What is 1+1?")], "question": "What is 1+1?", "answer": "1+1=2 #### 2"}
    p = write(tmp_path / "both.jsonl", jsonl(both))
    assert detect_format(p) == "openai"
    (auto,) = load_data_file(p)
    (forced,) = load_data_file(p, "gsm8k")
    assert auto.messages and auto.completion is None
    assert forced.messages is None and forced.completion == " 1+1=2 #### 2"
    (reft,) = load_data_file(write(tmp_path / "r.json", json.dumps([REFT_OK])), "reft")
    assert reft.id == "gsm8k_0"


def test_formats_match_the_config():
    assert FORMATS == typing.get_args(DataConfig.model_fields["format"].annotation)


# --- broken files ---------------------------------------------------------------------------------

ASSISTANT = {"role": "assistant", "content": "Paris"}
BROKEN = [
    # (file name, content, loader: a format or "sft", where the error points, what it says)
    # the RFT prompt ends with the answer: a worked example put in the items file
    ("r.jsonl", jsonl(RFT_OK, {"messages": [user("q"), ASSISTANT]}), "auto", ":2",
     "the last message must be from the user (the prompt the model answers)"),
    # a line without the chat, only its reference
    ("r.jsonl", jsonl(RFT_OK, {"reference_answer": "x"}), "auto", ":2", "missing field 'messages'"),
    # tool definitions copied from a tool-use data set
    ("r.jsonl", jsonl(RFT_OK, {**RFT_OK, "tools": []}), "auto", ":2", "'tools' is reserved: tool use is not supported"),
    # a role name from another chat format
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "human", "content": "q"}]}), "auto", ":2",
     "messages[0]: role 'human' is not one of system, developer, user, assistant"),
    # a tool result turn
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "tool", "content": "42"}, user("q")]}), "openai", ":2",
     "tool use is not supported"),
    # messages given as bare strings
    ("r.jsonl", jsonl(RFT_OK, {"messages": ["Capital of France?"]}), "auto", ":2", "messages[0]: expected an object"),
    # a message without its content
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "user"}]}), "auto", ":2", "messages[0]: missing 'content'"),
    # content that is neither text nor content parts
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "user", "content": 42}]}), "auto", ":2",
     "'content' must be a string or a list of content parts"),
    # an image part: the model reads text only
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
     "auto", ":2", "only text parts are supported"),
    # a content part without its text
    ("r.jsonl", jsonl(RFT_OK, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}), "auto", ":2",
     "content[0] must be a text part"),
    # an empty chat
    ("r.jsonl", jsonl(RFT_OK, {"messages": []}), "auto", ":2", "'messages' must be a non-empty list"),
    # an id that is an object
    ("r.jsonl", jsonl(RFT_OK, {**RFT_OK, "id": {"n": 1}}), "auto", ":2", "field 'id' must be a string or an integer"),
    # an RFT items file given as the SFT file: no assistant reply to learn
    ("s.jsonl", jsonl(SFT_OK, RFT_OK), "sft", ":2", "the last message must be the assistant's reply"),
    # SFT roles in the wrong order: the reply follows the system prompt, not a user turn
    ("s.jsonl", jsonl(SFT_OK, {"messages": [{"role": "system", "content": "s"}, ASSISTANT]}), "sft", ":2",
     "the message before the assistant's reply must be from the user, got 'system'"),
    # an SFT reply left blank
    ("s.jsonl", jsonl(SFT_OK, {"messages": [user("q"), {"role": "assistant", "content": " "}]}), "sft", ":2",
     "the assistant's reply is empty"),
    # a .json file holding one object instead of the array
    ("d.json", json.dumps(REFT_OK, indent=2), "auto", "", "must hold a JSON array of items"),
    # a JSONL file forced to the ReFT format
    ("d.jsonl", jsonl(REFT_OK), "reft", "", "the ReFT format expects a JSON array"),
    # a ReFT array forced to a JSONL format
    ("d.json", json.dumps([REFT_OK]), "gsm8k", "", "holds a JSON array (the ReFT format)"),
    # a number among the array's objects
    ("d.json", json.dumps([REFT_OK, 3]), "auto", "[1]", "expected a JSON object, got a number"),
    # the answer left out
    ("d.json", json.dumps([REFT_OK, {"question": "q"}]), "auto", "[1]", "missing field 'answer_value'"),
    # the answer as a list
    ("d.json", json.dumps([REFT_OK, {"question": "q", "answer_value": [1]}]), "auto", "[1]",
     "'answer_value' must be a number or a string, got an array"),
    # a blank question
    ("d.json", json.dumps([{"question": " ", "answer_value": 1}]), "auto", "[0]",
     "'question' must be a non-empty string"),
    # a missing comma between two elements (line 3)
    ("d.json", '[\n  {"question": "a", "answer_value": 1}\n  {"question": "b", "answer_value": 2}\n]\n', "auto", ":3",
     "invalid JSON"),
    # an empty array
    ("d.json", "[]\n", "auto", "", "no items"),
    # a Latin-1 file: é as one byte on line 2
    ("d.jsonl", jsonl(GSM8K_OK).encode() + b'{"question": "caf\xe9?", "answer": "#### 1"}\n', "auto", ":2",
     "not UTF-8 text"),
    # an empty file
    ("d.jsonl", "", "auto", "", "no items (the file is empty)"),
    # only blank lines
    ("d.jsonl", "\n  \n", "openai", "", "no items"),
    # a truncated line
    ("d.jsonl", jsonl(GSM8K_OK) + '{"question": "q", "ans\n', "auto", ":2", "invalid JSON"),
    # a line that is an array
    ("d.jsonl", jsonl(GSM8K_OK) + "[1, 2]\n", "auto", ":2", "expected a JSON object, got an array"),
    # keys of no known format
    ("d.jsonl", "\n" + jsonl({"prompt": "q", "label": "x"}), "auto", ":2", "cannot tell the format"),
    # ReFT objects one per line
    ("d.jsonl", jsonl(REFT_OK), "auto", ":1", "ReFT items (question, answer_value) go in a JSON array"),
    # a path that does not exist
    ("missing.jsonl", None, "auto", "", "cannot read (No such file or directory)"),
]


@pytest.mark.parametrize("name, content, loader, where, message", BROKEN)
def test_broken_files_are_one_line_naming_the_place(tmp_path, name, content, loader, where, message):
    path = tmp_path / name if content is None else write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        load_sft_file(path) if loader == "sft" else load_data_file(path, loader)
    text = str(err.value)
    assert text.startswith(f"{path}{where}: "), text
    assert message in text and "\n" not in text


# --- Hugging Face datasets ------------------------------------------------------------------------

@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_hf_dataset_columns_renamed_then_normalised(tmp_path, hf_cache):
    """A local directory of data files is a dataset for `load_dataset` (no network)."""
    ds = tmp_path / "ds"
    ds.mkdir()
    write(ds / "train.jsonl", jsonl({"problem": "1+1?", "solution": "1+1=2 #### 2"},
                                    {"problem": "3?", "solution": "3"}))
    a, b = load_hf_dataset(str(ds), None, "train", {"problem": "question", "solution": "answer"}, "auto")
    assert (a.id, a.completion, b.completion) == ("train-0", " 1+1=2 #### 2", None)
    assert a.item["question"] == "1+1?"
    chat = tmp_path / "chat"
    chat.mkdir()
    write(chat / "train.jsonl", jsonl(RFT_OK))
    (r,) = load_hf_dataset(str(chat), None, "train", {}, "auto")
    assert r.messages == RFT_OK["messages"] and r.item["reference_answer"] == "Paris"


def test_hf_dataset_errors_name_the_row(tmp_path, hf_cache):
    ds = tmp_path / "ds"
    ds.mkdir()
    write(ds / "train.jsonl", jsonl({"question": "q", "answer": "#### 1"}, {"question": "q2", "answer": "none"}))
    with pytest.raises(DataError, match=re.escape(f"{ds}[train][1]: field 'answer' has no final answer")):
        load_hf_dataset(str(ds), None, "train", {}, "auto")
    with pytest.raises(DataError, match="data.hf_columns: dataset .* has no column 'problem'"):
        load_hf_dataset(str(ds), None, "train", {"problem": "question"}, "auto")
    with pytest.raises(DataError, match=r"data.hf_name=.*: cannot load split 'test'") as err:
        load_hf_dataset(str(ds), None, "test", {}, "auto")
    assert "\n" not in str(err.value)


# --- reftflow data check --------------------------------------------------------------------------

def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "data", "check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_data_check_reports_format_counts_fields_and_duplicates(tmp_path):
    p = write(tmp_path / "items.json", json.dumps([
        REFT_OK,
        {"item_id": "b", "question": "4*4?", "answer_value": 16, "source": "x"},
        {"item_id": "c", "question": " 3*4? ", "answer_value": 12},  # the same prompt as the first
    ]))
    done = check(str(p))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{p}: OK",
        "format: reft (detected)",
        "items: 3",
        "with a reference completion: 1 (2 answer-only)",
        "fields in every item: {{ item.answer_value }}, {{ item.item_id }}, {{ item.question }}",
        "fields in some items: {{ item.answer_cot }} (1 of 3), {{ item.source }} (1 of 3)",
        "duplicate prompts: 1 (prepare keeps the first of each): 'c' repeats 'gsm8k_0'",
    ]


def test_data_check_bad_file_is_one_line_and_exit_2(tmp_path):
    p = write(tmp_path / "items.jsonl", jsonl(RFT_OK, {"messages": [user("q"), ASSISTANT]}))
    done = check(str(p))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"reftflow data check: error: {p}:2: the last message must be from the user "
                                        "(the prompt the model answers), got 'assistant'; a worked example ending in "
                                        "the assistant's reply belongs in data.sft_path"]
    assert "Traceback" not in done.stderr


def test_data_check_help_and_sft(tmp_path, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", "--help"])
    assert exit_.value.code == 0 and "reftflow data check PATH" in capsys.readouterr().out
    p = write(tmp_path / "sft.jsonl", jsonl(SFT_OK, SFT_OK))
    assert main(["data", "check", "--sft", str(p)]) == 0
    out = capsys.readouterr().out
    assert "format: openai chat SFT\n" in out and "with a reference completion: 2 (0 answer-only)" in out
    assert "duplicate prompts: 1 (prepare keeps every SFT example)" in out
    assert main(["data", "check", "--sft", str(write(tmp_path / "rft.jsonl", jsonl(RFT_OK)))]) == 2
    assert capsys.readouterr().err.startswith(f"reftflow data check: error: {tmp_path / 'rft.jsonl'}:1: ")


# --- docs/data.md ---------------------------------------------------------------------------------

def doc_examples(kind: str) -> list[str]:
    """The fenced blocks of docs/data.md marked `<!-- example: kind -->`."""
    return re.findall(rf"<!-- example: {kind} -->\n```\w*\n(.*?)```", DOCS.read_text(), re.S)


def test_docs_examples_are_accepted(tmp_path, capsys, monkeypatch):
    from flows.cli import main

    (openai,), (reft,), (gsm8k,), (sft,) = (doc_examples(k) for k in ("openai", "reft", "gsm8k", "sft"))
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    capitals = load_data_file(write(raw / "capitals.jsonl", openai))
    assert [r.item["reference_answer"] for r in capitals] == ["Paris", "Rome"]
    assert [r.completion is not None for r in load_data_file(write(raw / "reft.json", reft))] == [True, True, False]
    assert load_data_file(write(raw / "g.jsonl", gsm8k))[0].completion == " 3 bags of 4 is 3*4=12 apples. #### 12"
    assert load_sft_file(write(raw / "sft.jsonl", sft))[0].completion == "Madrid"
    graders = doc_examples("grader")
    assert len(graders) == 3
    for spec in graders:
        build_grader(json.loads(spec)).close()
    for params in doc_examples("params"):
        DataConfig.model_validate(yaml.safe_load(params)["data"])
    # the `reftflow data check` transcript, run in the directory it shows
    text = DOCS.read_text()
    transcript = re.search(r"\$ reftflow data check (\S+)\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "check", transcript.group(1)]) == 0
    assert capsys.readouterr().out == transcript.group(2)
    first, second = openai.splitlines()
    with_reply = json.loads(second)
    with_reply["messages"].append({"role": "assistant", "content": "Rome"})
    write(raw / "capitals.jsonl", first + "\n" + json.dumps(with_reply) + "\n")
    error = re.search(r"\$ reftflow data check (\S+)\n(reftflow data check: error: .*)\n```", text)
    assert main(["data", "check", error.group(1)]) == 2
    assert capsys.readouterr().err == error.group(2) + "\n"
