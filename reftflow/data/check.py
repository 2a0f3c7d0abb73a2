"""`reftflow data check`: read a data file the way the prepare stage does and say what it holds.

    reftflow data check PATH [--format auto|openai|reft|gsm8k] [--prompt-template T]
    reftflow data check PATH --sft

Prints the format, the number of items, how many carry a reference completion (what SFT imitates),
the item fields a grader can reference as `{{ item.<field> }}`, and how many items repeat an earlier
item's prompt. A bad file is one line on stderr and exit status 2 (docs/data.md has the formats).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from reftflow.data.formats import FORMATS, detect_format, load_data_file, load_sft_file, prompt_key
from reftflow.data.prepare import with_prompts
from reftflow.data.records import Record
from reftflow.config import DEFAULT_PROMPT_TEMPLATE
from reftflow.errors import InputError
from reftflow.exits import one_line_errors


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="inspect data files (see docs/data.md)",
                                 description="Inspect data files in the formats the prepare stage reads.")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = commands.add_parser("check", help="validate a data file and list the item fields graders can use",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", help="a data file (data.path, data.val_path or, with --sft, data.sft_path)")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="the items' format, as data.format (default: auto)")
    p.add_argument("--sft", action="store_true", help="PATH is an OpenAI chat SFT file (data.sft_path)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="data.prompt_template, for items without messages (default: %(default)r)")
    p.set_defaults(func=run)
    return p


@dataclass(frozen=True)
class Summary:
    format: str
    items: int
    with_completion: int
    fields_in_all: list[str]
    fields_in_some: dict[str, int]
    """field → how many items have it, for fields only some items have."""
    duplicates: list[tuple[str, str]]
    """(id, id of the earlier item with the same prompt) for each repeated prompt."""


def duplicate_prompts(records: list[Record]) -> list[tuple[str, str]]:
    """The items `formats.dedupe` drops, each with the earlier item it repeats (to find them in the file)."""
    first: dict[str, str] = {}
    out = []
    for r in records:
        key = prompt_key(r)
        if key in first:
            out.append((r.id, first[key]))
        else:
            first[key] = r.id
    return out


def summarise(records: list[Record], fmt: str, template: str) -> Summary:
    """What `check` reports; duplicates are found as prepare finds them (the same prompts, built by
    prepare's own `with_prompts`)."""
    counts = Counter(key for r in records for key in r.item)
    n = len(records)
    return Summary(
        format=fmt,
        items=n,
        with_completion=sum(1 for r in records if r.completion),
        fields_in_all=sorted(k for k, c in counts.items() if c == n),
        fields_in_some={k: counts[k] for k in sorted(counts) if counts[k] < n},
        duplicates=duplicate_prompts(with_prompts(records, template)),
    )


def report_lines(path: str, summary: Summary, detected: bool, sft: bool) -> list[str]:
    s = summary
    how = " (detected)" if detected else ""
    lines = [
        f"{path}: OK",
        f"format: {s.format}{' chat SFT' if sft else ''}{how}",
        f"items: {s.items}",
        f"with a reference completion: {s.with_completion} ({s.items - s.with_completion} answer-only)",
        "fields in every item: " + (", ".join(f"{{{{ item.{k} }}}}" for k in s.fields_in_all) or "none"),
    ]
    if s.fields_in_some:
        lines.append("fields in some items: "
                     + ", ".join(f"{{{{ item.{k} }}}} ({c} of {s.items})" for k, c in s.fields_in_some.items()))
    kept = "prepare keeps every SFT example" if sft else "prepare keeps the first of each"
    examples = ", ".join(f"{dup!r} repeats {orig!r}" for dup, orig in s.duplicates[:3])
    lines.append(f"duplicate prompts: {len(s.duplicates)} ({kept})" + (f": {examples}" if examples else ""))
    return lines


@one_line_errors("data check", internal=True)  # DataError and the template's errors: already one line
def run(args: argparse.Namespace) -> int:
    if args.sft:
        if args.format != "auto":
            raise InputError("--format does not apply to --sft (SFT files are OpenAI chat JSONL)")
        records, fmt, detected = load_sft_file(args.path), "openai", False
    else:
        detected = args.format == "auto"
        fmt = detect_format(args.path) if detected else args.format
        records = load_data_file(args.path, fmt)
    summary = summarise(records, fmt, args.prompt_template)
    print("\n".join(report_lines(args.path, summary, detected, args.sft)))
    return 0
