"""Grader throughput: samples/s per grader type, one table.

    python benchmarks/graders.py [--n N] [--out benchmarks/results/graders.json]

Pure-Python graders (numeric_answer, string_check, ranked_list, text_similarity fuzzy_match, multi) run
in this process on one core; python and program_answer go through the sandbox pool (one worker per core).
Each figure is the best of 3 timed runs of grade_many over N samples, after one warm-up run (which also
starts the sandbox workers, so their start-up is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reftflow.graders import build_grader  # noqa: E402

GENES = ["TP53", "BRCA1", "PTEN", "APC", "MLH1", "KRAS", "EGFR", "MYC"]


def workloads(n: int) -> dict[str, tuple[dict, list[str], list[dict]]]:
    answers = [str(i % 97) for i in range(n)]
    gsm8k = [f"She has {i % 90}+7={i % 90 + 7} apples. #### {i % 97 if i % 3 else i % 89}" for i in range(n)]
    items = [{"id": str(i), "question": "q", "answer": a, "reasoning": None} for i, a in enumerate(answers)]
    ranked_texts = ["\n".join(f"{r + 1}. {GENES[(i + r) % 8]}" for r in range(4)) for i in range(n)]
    ranked_items = [{"gene": GENES[i % 5]} for i in range(n)]
    programs = [f"def solution():\n    a = {i % 50}\n    b = 7\n    return a + b\n" for i in range(n)]
    program_items = [{"answer": str(i % 50 + (7 if i % 4 else 8))} for i in range(n)]
    numeric = {"type": "numeric_answer", "name": "acc", "reference": "{{ item.answer }}", "extraction": "gsm8k"}
    string = {"type": "string_check", "name": "fmt", "input": "{{ sample.output_text }}", "reference": "####", "operation": "like"}
    python_src = (
        "def grade(sample, item):\n"
        "    text = sample['output_text']\n"
        "    tail = text.rsplit('####', 1)[-1].strip()\n"
        "    return 1.0 if tail == item['answer'] else 0.0\n"
    )
    return {
        "numeric_answer": (numeric, gsm8k, items),
        "string_check": (string, gsm8k, items),
        "ranked_list": (
            {"type": "ranked_list", "name": "rank", "reference": "{{ item.gene }}", "scores": [1.0, 0.7, 0.5, 0.3]},
            ranked_texts,
            ranked_items,
        ),
        "text_similarity (fuzzy_match)": (
            {"type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
             "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"},  # fmt: skip
            gsm8k,
            items,
        ),
        "multi (numeric + string)": (
            {"type": "multi", "name": "combo", "graders": {"acc": numeric, "fmt": string},
             "calculate_output": "0.9 * acc + 0.1 * fmt"},  # fmt: skip
            gsm8k,
            items,
        ),
        "python (sandbox)": ({"type": "python", "name": "py", "source": python_src}, gsm8k, items),
        "program_answer (sandbox)": (
            {"type": "program_answer", "name": "pot", "reference": "{{ item.answer }}"},
            programs,
            program_items,
        ),
    }


def measure(spec: dict, texts: list[str], items: list[dict], repeats: int = 3) -> dict:
    with build_grader(spec) as grader:
        warm = max(1, len(texts) // 10)
        grader.grade_many(texts[:warm], items[:warm])  # starts sandbox workers, imports metric libraries
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            results = grader.grade_many(texts, items)
            best = min(best, time.perf_counter() - start)
    errors = sum(r.error is not None for r in results)
    return {
        "samples": len(texts),
        "seconds": round(best, 4),
        "samples_per_s": round(len(texts) / best),
        "mean_score": round(sum(r.score for r in results) / len(results), 4),
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="samples per pure-Python grader (sandboxed: n / 4)")
    parser.add_argument("--out", default="benchmarks/results/graders.json")
    args = parser.parse_args()
    rows = {}
    for name, (spec, texts, items) in workloads(args.n).items():
        sandboxed = "sandbox" in name
        n = max(1, args.n // 4) if sandboxed else args.n
        rows[name] = measure(spec, texts[:n], items[:n]) | {"sandboxed": sandboxed}
    print(f"{'grader':32s} {'samples':>8s} {'seconds':>8s} {'samples/s':>10s} {'mean':>6s} {'errors':>6s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['samples']:8d} {r['seconds']:8.3f} {r['samples_per_s']:10,d} {r['mean_score']:6.3f} {r['errors']:6d}")
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
