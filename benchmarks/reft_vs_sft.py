"""ReFT vs SFT: does the RL stage beat continued SFT for the same wall time? One table, JSON to --out.

    python benchmarks/reft_vs_sft.py                    # the default regime, 3 seeds (~25 min, 2 threads)
    python benchmarks/reft_vs_sft.py --quick            # tiny sizes, a smoke test (< 2 min)
    python benchmarks/reft_vs_sft.py --params params.yaml --seeds 0 1 2 3

From one SFT warm-up checkpoint, each seed runs
  (c) PPO (ours) for `ppo.steps` steps, timed: its training time T is the budget of the others;
  (b) SFT continued from the warm-up for T seconds (same lr/schedule as the warm-up, restarted,
      with the schedule sized to T from the warm-up's measured step rate; a time limit stops it);
  (d) GRPO (TRL GRPOTrainer, same grader, model, K and batch) for T seconds;
  (e) RAFT (rejection sampling + fine-tuning on full marks, `ppo.raft`) for T seconds;
and every model, with (a) the warm-up, is scored by greedy accuracy on the held-out questions.
The RL arms all run through `reftflow.rl.build_algorithm` and stop at the first step end past T.
Episodes/s (an episode = one sampled answer graded and trained on) are the mean over RL steps after
the first two (cold shapes); the PPO step fractions split a step into generation, scoring forwards
(old policy + values, reference), update, and everything else (grading, GAE, metrics).

The regime (data/model/sft/ppo/grader) is the repo's params.yaml unless --params names another
file. Tune on another --data-seed, never on the table's val split.
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

from reftflow.config import DataConfig, ModelConfig, PPOConfig, SFTConfig, load_params  # noqa: E402

ARMS = ["warmup", "sft_continued", "ppo", "grpo", "raft"]
PARTS = ["generate", "forward", "update", "other"]
# The default regime is the shipped params.yaml (docs/regime.md explains how it was found); --quick
# swaps in tiny sizes for a smoke test.
QUICK = {
    "data": DataConfig(num_train=48, num_val=16, max_ops=1, worked_fraction=0.5),
    "model": ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, torch_threads=1),
    "sft": SFTConfig(max_steps=6, batch_size=8, logging_steps=1000),
    "ppo": PPOConfig(steps=3, questions_per_step=4, samples_per_question=2, minibatch_size=4, max_new_tokens=16,
                     checkpoint_every=0, lr=1e-3),
}


class Progress:
    """One line per event on stderr, with the elapsed time of the whole run."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        m, s = divmod(int(time.perf_counter() - self.t0), 60)
        print(f"[{m:3d}:{s:02d}] {msg}", file=sys.stderr, flush=True)


def mean_std(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def warm_mean(history: list[dict], key: str, skip: int = 2) -> float:
    """Mean of `key` over the steps after the first `skip` (cold generate shapes), or all if too few."""
    vals = [m[key] for m in history if key in m and math.isfinite(m[key])]
    vals = vals[skip:] if len(vals) > skip else vals
    return statistics.fmean(vals) if vals else float("nan")


@contextlib.contextmanager
def quiet_stdout():
    """TRL's trainers print every log dict to stdout; the progress lines go to stderr."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def continue_sft(policy: Path, records, model_cfg: ModelConfig, cfg: SFTConfig, out_dir: Path, seed: int,
                 budget_s: float, steps_per_s: float) -> dict[str, float]:
    """SFT from `policy` for `budget_s` seconds: reftflow.sft.train_sft with a time limit.

    The schedule (warm-up ratio, cosine decay) is sized to the steps expected in the budget, so the
    arm gets a full schedule rather than one cut off at its peak learning rate.
    """
    from reftflow.sft import train_sft

    steps = max(1, int(budget_s * steps_per_s))
    summary = train_sft(records, model_cfg, cfg.model_copy(update={"max_steps": steps, "logging_steps": 10**9}),
                        out_dir, seed, init_from=policy, time_limit_s=budget_s)
    return {"steps": int(summary["global_steps"]), "planned_steps": steps, "wall_s": summary["wall_s"]}


def run_rl(name: str, policy: Path, records, cfg: PPOConfig, grader, out_dir: Path, seed: int, threads: int,
           budget_s: float | None, say: Progress) -> tuple[list[dict], float]:
    """One RL arm through the `reftflow.rl` protocol: train until `cfg.steps` or `budget_s` seconds of
    training (checked at each step's end), then save; (metrics per step, training seconds)."""
    from reftflow.rl import build_algorithm

    with quiet_stdout():
        algo = build_algorithm(name, policy, records, cfg, grader, out_dir, seed, torch_threads=threads)
    history, t = [], time.perf_counter()
    with quiet_stdout():
        for m in algo.train():
            history.append(m)
            if m["step"] % max(1, cfg.steps // 10) == 0:
                say(f"  {name} step {int(m['step'])}: sample accuracy {m['rl/accuracy']:.2f}, "
                    f"{m['rl/episodes_per_s']:.1f} episodes/s")
            if budget_s is not None and time.perf_counter() - t >= budget_s:
                break
    wall = time.perf_counter() - t
    algo.save()
    return history, wall


def run(args: argparse.Namespace) -> dict:
    from reftflow.config import DEFAULT_GRADER

    if args.quick and not args.params:
        regime, grader_spec = dict(QUICK), DEFAULT_GRADER
    else:
        p = load_params(args.params or ROOT / "params.yaml")
        regime = {"data": p.data, "model": p.model, "sft": p.sft, "ppo": p.ppo.model_copy(update={"checkpoint_every": 0})}
        grader_spec = p.grader
    if args.ppo_steps:
        regime["ppo"] = regime["ppo"].model_copy(update={"steps": args.ppo_steps})
    data_cfg, model_cfg, sft_cfg, ppo_cfg = regime["data"], regime["model"], regime["sft"], regime["ppo"]
    threads = args.threads if args.threads is not None else model_cfg.torch_threads
    seeds = args.seeds or ([0, 1, 2])

    import torch

    from reftflow.data.prepare import build_splits
    from reftflow.evaluation import evaluate_model
    from reftflow.graders import build_grader
    from reftflow.modeling import count_parameters, load_model, set_threads
    from reftflow.sft import train_sft
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_threads(threads)
    say = Progress()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="reft-vs-sft-"))
    work.mkdir(parents=True, exist_ok=True)
    grader = build_grader(grader_spec, base_dir=ROOT)

    def accuracy(model_dir: Path, label: str) -> float:
        t = time.perf_counter()
        res = evaluate_model(model_dir, val, grader, ppo_cfg.max_new_tokens, 100, label)
        say(f"  {label}: held-out accuracy {res.metrics['pass_rate']:.3f} (eval {time.perf_counter() - t:.0f}s)")
        return res.metrics["pass_rate"]

    train, val, report = build_splits(data_cfg, args.data_seed)
    say(f"data: {report['train_items']} train ({report['train_worked']} worked, {report['train_answer_only']} "
        f"answer-only), {report['val_items']} held-out; data seed {args.data_seed}; {threads} thread(s)")

    # (a) the warm-up, shared by every seed and arm
    t = time.perf_counter()
    warm = work / "warmup"
    with quiet_stdout():
        summary = train_sft(train, model_cfg, sft_cfg, warm, seed=args.data_seed)
    warm_s = time.perf_counter() - t
    sft_steps_per_s = summary["global_steps"] / max(summary["train_runtime_s"], 1e-9)
    say(f"warm-up SFT: {int(summary['global_steps'])} steps on {int(summary['train_examples'])} worked items in "
        f"{warm_s:.0f}s ({sft_steps_per_s:.2f} steps/s)")
    acc: dict[str, list[float]] = {arm: [] for arm in ARMS}
    acc_warm = accuracy(warm, "warmup")
    params = count_parameters(load_model(warm)[0])

    eps: dict[str, list[float]] = {"ppo": [], "grpo": [], "raft": []}
    fractions: list[dict[str, float]] = []
    per_seed = []
    step_s: dict[str, float] = {}
    """the last seed's seconds per step of grpo and raft: sizes the next seed's schedule to the budget."""
    for seed in seeds:
        say(f"seed {seed}")
        acc["warmup"].append(acc_warm)
        # (c) PPO for ppo.steps; its training time T is the budget of (b), (d) and (e)
        history, budget = run_rl("ppo", warm, train, ppo_cfg, grader, work / f"ppo-{seed}", seed, threads, None, say)
        say(f"  ppo: {len(history)} steps in {budget:.0f}s (the budget of the other arms)")
        acc["ppo"].append(accuracy(work / f"ppo-{seed}", "ppo"))
        eps["ppo"].append(warm_mean(history, "rl/episodes_per_s"))
        ppo_step_s = warm_mean(history, "time/step_s")
        fractions.append({p: warm_mean(history, f"time/{p}_s") / ppo_step_s for p in PARTS})

        # (b) SFT continued for the same wall time
        with quiet_stdout():
            sft = continue_sft(warm, train, model_cfg, sft_cfg, work / f"sft-{seed}", seed, budget, sft_steps_per_s)
        say(f"  sft continued: {sft['steps']} steps (planned {sft['planned_steps']}) in {sft['wall_s']:.0f}s")
        acc["sft_continued"].append(accuracy(work / f"sft-{seed}", "sft_continued"))

        # (d) GRPO and (e) RAFT for the same wall time; their step counts (lr schedule) are sized from the
        # last seed's speed (the first seed plans 3x PPO's steps, so the budget, not the plan, ends it)
        row = {}
        for arm in ("grpo", "raft"):
            planned = max(1, round(budget / step_s[arm])) if arm in step_s else 3 * ppo_cfg.steps
            hist, wall = run_rl(arm, warm, train, ppo_cfg.model_copy(update={"algorithm": arm, "steps": planned}),
                                grader, work / f"{arm}-{seed}", seed, threads, budget, say)
            step_s[arm] = warm_mean(hist, "time/step_s")
            eps[arm].append(warm_mean(hist, "rl/episodes_per_s"))
            say(f"  {arm}: {len(hist)} steps (planned {planned}) in {wall:.0f}s, {eps[arm][-1]:.1f} episodes/s "
                f"(ppo {eps['ppo'][-1]:.1f})")
            acc[arm].append(accuracy(work / f"{arm}-{seed}", arm))
            row[f"{arm}_steps"] = len(hist)
        per_seed.append({"seed": seed, "budget_s": budget, "ppo_steps": len(history), "sft_steps": sft["steps"],
                         **row, **{arm: acc[arm][-1] for arm in ARMS},
                         "ppo_sample_accuracy_last": history[-1]["rl/accuracy"] if history else None})

    result = {
        "heldout_accuracy": {arm: mean_std(acc[arm]) for arm in ARMS},
        "seeds": seeds,
        "episodes_per_s": {k: statistics.fmean(v) for k, v in eps.items()},
        "ppo_step_fraction": {p: statistics.fmean(f[p] for f in fractions) for p in PARTS},
        "per_seed": per_seed,
        "setup": {
            "quick": args.quick, "data_seed": args.data_seed, "torch_threads": threads, "parameters": params,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count(),
            "warmup_s": warm_s, "data_report": report,
            "data": data_cfg.model_dump(), "model": model_cfg.model_dump(), "sft": sft_cfg.model_dump(),
            "ppo": ppo_cfg.model_dump(), "grader": grader_spec,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    print(f"wrote {out}")
    return result


def print_table(r: dict) -> None:
    h, s = r["heldout_accuracy"], r["setup"]
    print(f"\nReFT vs SFT: {s['parameters']:,}-parameter model, {s['data_report']['train_items']} train questions "
          f"({s['data_report']['train_worked']} worked), {s['data_report']['val_items']} held-out, "
          f"seeds {r['seeds']}, {s['torch_threads']} thread(s), {s['device']}")
    print(f"{'arm':<26}{'held-out accuracy':>20}{'vs warm-up':>12}")
    names = {"warmup": "(a) SFT warm-up", "sft_continued": "(b) SFT continued, same T", "ppo": "(c) PPO (ours)",
             "grpo": "(d) GRPO (TRL), same T", "raft": "(e) RAFT, same T"}
    for arm in ARMS:
        d = h[arm]["mean"] - h["warmup"]["mean"]
        print(f"{names[arm]:<26}{100 * h[arm]['mean']:>12.1f} ± {100 * h[arm]['std']:<5.1f}{100 * d:>+11.1f}")
    e = r["episodes_per_s"]
    print(f"episodes/s: ppo {e['ppo']:.1f}, grpo {e['grpo']:.1f} ({e['ppo'] / e['grpo']:.2f}x), raft {e['raft']:.1f}")
    f = r["ppo_step_fraction"]
    print("ppo step: " + ", ".join(f"{p} {100 * f[p]:.0f}%" for p in PARTS))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny model, data and steps: a smoke test (< 2 min)")
    ap.add_argument("--params", help="regime: data/model/sft/ppo/grader from this file (default: the repo's params.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", help="RL / continued-SFT seeds (default: 0 1 2)")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="seed of the train/held-out split and the warm-up (tune on another one)")
    ap.add_argument("--ppo-steps", type=int, help="override ppo.steps (and so the time budget)")
    ap.add_argument("--threads", type=int, help="torch threads (default: model.torch_threads)")
    ap.add_argument("--workdir", help="keep models here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--out", help="JSON result (default: benchmarks/results/reft_vs_sft.json; --quick: a temp file)")
    args = ap.parse_args(argv)
    if args.out is None:
        quick_out = Path(tempfile.gettempdir()) / "reft_vs_sft_quick.json"
        args.out = str(quick_out if args.quick else ROOT / "benchmarks" / "results" / "reft_vs_sft.json")
    return run(args)


if __name__ == "__main__":
    main()
