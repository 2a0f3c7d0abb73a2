"""`reftflow grade`: run a grader over a JSONL file of samples (like OpenAI's grader run/validate endpoints).

    reftflow grade --grader G.json --input S.jsonl [--output O.jsonl]
    reftflow grade --grader G.json --validate [--input S.jsonl]

Each input line is {"item": {...}, "output_text": "..."}; each output line is {"score", "sub_scores",
"error"} in input order (to --output atomically, else stdout). A summary goes to stderr. A bad grader or a
bad input line is one line on stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from reftflow.errors import InputError
from reftflow.exits import one_line_errors
from reftflow.graders.spec import build_grader
from reftflow.io import atomic_write_text


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "grade",
        help="score samples with a grader (or --validate a grader)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--grader", required=True, help="grader object: a .json/.yaml/.yml file")
    p.add_argument("--input", help="JSONL of samples: {\"item\": {...}, \"output_text\": \"...\"} per line")
    p.add_argument("--output", help="JSONL of results (default: stdout)")
    p.add_argument("--validate", action="store_true", help="only check the grader (and --input's item fields)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def read_samples(path: str) -> tuple[list[str], list[dict]]:
    from reftflow.data.records import DataError, iter_jsonl

    texts, items = [], []
    try:
        for number, row in iter_jsonl(path):
            if not isinstance(row.get("item"), dict):
                raise InputError(f"{path}:{number}: missing 'item' (an object)")
            if not isinstance(row.get("output_text"), str):
                raise InputError(f"{path}:{number}: missing 'output_text' (a string)")
            texts.append(row["output_text"])
            items.append(row["item"])
    except DataError as e:  # unreadable file, broken JSON line, not an object: already one line
        raise InputError(str(e)) from None
    return texts, items


@one_line_errors("grade", internal=True)  # the contract is one line, never a traceback
def run(args: argparse.Namespace) -> int:
    if not args.validate and not args.input:
        raise InputError("--input is required (or use --validate)")
    texts: list[str] = []
    items: list[dict] = []
    item_fields = None
    if args.input:
        texts, items = read_samples(args.input)
        # "a field no item has": the union of item fields in the file
        item_fields = set().union(*(it.keys() for it in items)) if items else None
    grader = build_grader(args.grader, item_fields=item_fields)
    with grader:
        if args.validate:
            checked = f", {len(items)} samples' item fields checked" if args.input else ""
            print(f"OK: grader {grader.name!r} ({grader.type}){checked}")
            return 0
        start = time.perf_counter()
        results = grader.grade_many(texts, items, progress=not args.no_progress)
        elapsed = time.perf_counter() - start
    lines = "".join(
        json.dumps({"score": r.score, "sub_scores": r.sub_scores, "error": r.error}, ensure_ascii=False) + "\n"
        for r in results
    )
    if args.output:
        atomic_write_text(args.output, lines)
    else:
        sys.stdout.write(lines)
        sys.stdout.flush()
    n = len(results)
    errors = sum(r.error is not None for r in results)
    mean = sum(r.score for r in results) / n if n else 0.0
    rate = n / elapsed if elapsed > 0 else float("inf")
    # a judge model grades a few samples a second: "0 samples/s" would hide it
    shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
    print(
        f"graded {n} samples with {grader.name!r}: mean score {mean:.4f}, {errors} errored, "
        f"{shown} samples/s ({elapsed:.2f} s)",
        file=sys.stderr,
    )
    if errors:
        first = next(r.error for r in results if r.error)
        print(f"first error: {first}", file=sys.stderr)
    return 0
