"""What a person looks at after an evaluation, logged into its MLflow run: every item's result as an
MLflow table, and report images.

- `eval/items.json`: one row per model and item (model, id, score, passed, answer, each sub-score, each
  field of the item, the prompt as the model saw it, the grader's error). Logged with MLflow's
  `log_table`, so MLflow 3.17's UI opens it on the run's Artifacts tab as a sortable, paged table
  ("View as table", on by default) instead of JSON text; the runs list's "Artifact evaluation" view
  lists it too. (MLflow's GenAI evaluation would need a trace per item and shows in the GenAI view,
  which reftflow's "Model training" experiment does not open on.)
- `report/scores.png`: each model's score histogram, the pass threshold marked.
- `report/flips.png`: with two models, the items whose pass/fail flipped either way, with both
  answers side by side.
- `report/rl_curves.png` (the evaluate stage): the RL stage's reward and validation curves, read from
  plots/rl_curve.csv, so the report of a pipeline run is in one place.
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from reftflow.data.records import Record
from reftflow.evaluation import EvalResult

ITEMS_TABLE = "eval/items.json"
REPORT_DIR = "report"
CURVE_PANELS = ["train_reward_mean", "valid_reward_mean", "accuracy"]
"""the RL curves the report shows: what was rewarded, and how the held-out validation followed it."""
FLIPS_SHOWN = 8
"""flipped items drawn per direction; the table has them all."""


def item_rows(results: Mapping[str, EvalResult], records: Sequence[Record]) -> list[dict[str, Any]]:
    """One flat row per model and item, in the order a person reads them: columns are what the table shows.
    `records` are the items every result graded, in order."""
    out = []
    for label, res in results.items():
        for record, row, passed in zip(records, res.rows, res.passed):
            flat = {"model": label, "id": row["id"], "score": row["score"], "passed": bool(passed),
                    "answer": row["output"]}
            flat.update({f"sub_score.{name}": value for name, value in (row["sub_scores"] or {}).items()})
            flat.update({f"item.{name}": value for name, value in record.item.items()})
            flat.update(prompt=row["prompt"], error=row["error"])
            flat.update({k: row[k] for k in ("majority", "samples", "sample_scores") if k in row})
            out.append(flat)
    return out


def score_histograms(results: Mapping[str, EvalResult]):
    """One panel per model: how many items got each grader score, the pass threshold dashed."""
    from reftflow.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.8 * len(results), 2.9), sharex=True, sharey=True,
                             squeeze=False)
    bins = [i / 20 for i in range(21)]
    for ax, (label, res) in zip(axes.flat, results.items()):
        ax.hist([min(max(s, 0.0), 1.0) for s in res.scores], bins=bins, color="tab:blue", edgecolor="white")
        ax.axvline(res.threshold, color="grey", linestyle="--", linewidth=1)
        m = res.metrics
        ax.set_title(f"{label}: pass rate {m['pass_rate']:.3f}, mean score {m['mean_score']:.3f}", fontsize=9)
        ax.set_xlabel(f"grader score (passes at ≥ {res.threshold:g})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("items", fontsize=8)
    fig.suptitle(f"Score histograms, {len(next(iter(results.values())).rows)} items", fontsize=10)
    fig.tight_layout()
    return fig


def flips(before: EvalResult, after: EvalResult) -> tuple[list[int], list[int]]:
    """(the items only `after` passes, the items only `before` passes), as indices."""
    pairs = list(enumerate(zip(before.passed, after.passed)))
    return [i for i, (a, b) in pairs if b > a], [i for i, (a, b) in pairs if a > b]


def _cell(text: str, width: int, lines: int = 3, tail: bool = False) -> list[str]:
    """`text` on at most `lines` lines of `width` characters (whitespace collapsed); `tail` keeps the end,
    where a long chat prompt puts the question."""
    wrapped = textwrap.wrap(" ".join(str(text).split()), width - 1, break_on_hyphens=False) or [""]
    if len(wrapped) <= lines:
        return wrapped
    if tail:
        return ["…" + wrapped[-lines]] + wrapped[len(wrapped) - lines + 1:]
    return wrapped[: lines - 1] + [wrapped[lines - 1] + "…"]


WIDTHS = (12, 34, 32, 32)
"""characters per column of the flips figure: item id, prompt, and the two answers."""
FONT = 10
"""the flips figure's font size in points: readable where the MLflow UI shows the image at its own size."""


def _flip_lines(title: str, shown: list[int], total: int, before: EvalResult, after: EvalResult,
                names: tuple[str, str]) -> list[str]:
    """One section of the flips figure as monospace lines, the two answers side by side."""
    head = [names[0] + " answer (score)", names[1] + " answer (score)"]
    lines = [f"{title}: {total} item{'s' * (total != 1)}", ""]
    if not shown:
        return lines + ["  (none)", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(["item", "prompt", *head], WIDTHS)))
    lines.append("  ".join("-" * w for w in WIDTHS))
    for i in shown:
        a, b = before.rows[i], after.rows[i]
        cells = [_cell(a["id"], WIDTHS[0], 1), _cell(a["prompt"], WIDTHS[1], tail=True),
                 _cell(f"{a['output']} ({a['score']:.2f})", WIDTHS[2]), _cell(f"{b['output']} ({b['score']:.2f})", WIDTHS[3])]
        for n in range(max(len(c) for c in cells)):
            lines.append("  ".join((c[n] if n < len(c) else "").ljust(w) for c, w in zip(cells, WIDTHS)).rstrip())
        lines.append("")
    if total > len(shown):
        lines += [f"  … and {total - len(shown)} more (all of them in {ITEMS_TABLE})", ""]
    return lines


def flips_figure(before: EvalResult, after: EvalResult, names: tuple[str, str]):
    """The items whose pass/fail flipped between `before` and `after` (named `names`), both answers side
    by side, as a figure of monospace text."""
    from reftflow.plots import pyplot

    plt = pyplot()
    gained, lost = flips(before, after)
    lines = [f"Flipped items: {names[1]} vs {names[0]}, on the same {len(before.rows)} items", ""]
    lines += _flip_lines(f"passed by {names[1]} only", gained[:FLIPS_SHOWN], len(gained), before, after, names)
    lines += _flip_lines(f"passed by {names[0]} only", lost[:FLIPS_SHOWN], len(lost), before, after, names)
    width = sum(WIDTHS) + 2 * (len(WIDTHS) - 1)
    # a monospace character is about 0.6 em wide and a line 1.2 em high (1 em = FONT points, 72 to the inch)
    fig = plt.figure(figsize=(0.6 * FONT / 72 * width + 0.4, 1.2 * FONT / 72 * len(lines) + 0.3))
    fig.text(0.02, 0.98, "\n".join(lines), family="monospace", fontsize=FONT, va="top", ha="left")
    return fig


def read_curve(path: str | Path) -> list[dict[str, float]]:
    """plots/rl_curve.csv as rows of numbers; a cell left empty (no validation that step) is left out."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def log_report(run_log, results: Mapping[str, EvalResult], records: Sequence[Record],
               pair: tuple[str, str] | None = None, curve: Path | None = None) -> None:
    """Log the per-item table and the report images into `run_log`'s run. `pair`: (before, after) labels of
    `results` whose flips to draw; `curve`: plots/rl_curve.csv, drawn when it exists."""
    from reftflow.plots import curves_figure

    run_log.log_table(item_rows(results, records), ITEMS_TABLE)
    run_log.log_figure(score_histograms(results), f"{REPORT_DIR}/scores.png")
    if pair is not None:
        run_log.log_figure(flips_figure(results[pair[0]], results[pair[1]], pair), f"{REPORT_DIR}/flips.png")
    if curve is not None and Path(curve).exists():
        rows = read_curve(curve)
        if rows:
            run_log.log_figure(curves_figure(rows, CURVE_PANELS, "RL: reward and validation"),
                               f"{REPORT_DIR}/rl_curves.png")
