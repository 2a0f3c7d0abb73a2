"""PPO step speed: episodes/s and where a step's time goes (generate / forward / update / other).

    python benchmarks/ppo_speed.py                       # default-size tiny model, random init
    python benchmarks/ppo_speed.py --policy models/sft   # a trained warm-up (answers stop at EOS)

Runs `--warmup` PPO steps (not timed: first calls on new shapes are slow), then `--steps` timed
ones, prints one table and writes JSON to `--out`. "other" is everything outside sampling, the
reference forward and the update (grading, padding, GAE, metrics); the target is <= 15% of a step.
A random-init model never emits EOS, so every answer runs to max_new_tokens: the slow case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ["generate", "forward", "update", "other"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="an SFT model dir (default: build the default tiny model, random init)")
    ap.add_argument("--steps", type=int, default=5, help="timed PPO steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed PPO steps first")
    ap.add_argument("--questions", type=int, default=16, help="questions per step")
    ap.add_argument("--k", type=int, default=4, help="samples per question")
    ap.add_argument("--minibatch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="PPO epochs per step")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here: 2 for one process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", default="auto", type=lambda v: v if v == "auto" else v == "true",
                    help="model.bf16: auto (default), true or false")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_speed.json"))
    args = ap.parse_args(argv)

    import torch

    from reftflow import precision
    from reftflow.config import DEFAULT_GRADER, ModelConfig, RLConfig
    from reftflow.data.synthetic import generate
    from reftflow.graders import build_grader
    from reftflow.modeling import count_parameters, save_new_model
    from reftflow.rl import RLRun
    from reftflow.rl.ppo.trainer import PPOTrainer

    work = Path(tempfile.mkdtemp(prefix="ppo-speed-"))
    policy = Path(args.policy) if args.policy else work / "sft"
    if not args.policy:
        save_new_model(policy, ModelConfig(), args.seed)
    cfg = RLConfig(algorithm="ppo", steps=args.warmup + args.steps, questions_per_step=args.questions,
                   samples_per_question=args.k, max_new_tokens=args.max_new_tokens, checkpoint_every=0, eval_interval=0,
                   ppo={"minibatch_size": args.minibatch, "epochs": args.epochs})
    model_cfg = ModelConfig(torch_threads=args.threads, bf16=args.bf16)
    trainer = PPOTrainer(RLRun(policy, generate(500, seed=args.seed), cfg, build_grader(DEFAULT_GRADER), work / "ppo",
                               args.seed, model_cfg))
    t0 = time.perf_counter()
    history = list(trainer.train())
    wall = time.perf_counter() - t0
    timed = history[args.warmup:]

    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in timed)

    step_s = mean("time/step_s")
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": args.threads,
        "precision": precision.name(trainer.bf16),
        "parameters": count_parameters(trainer.lm),
        "policy": str(policy) if args.policy else "default tiny model, random init",
        "config": {"questions_per_step": args.questions, "samples_per_question": args.k, "minibatch_size": args.minibatch,
                   "ppo_epochs": args.epochs, "max_new_tokens": args.max_new_tokens},
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "episodes_per_step": args.questions * args.k,
        "episodes_per_s": args.questions * args.k / step_s,
        "step_s": step_s,
        "step_s_each": [m["time/step_s"] for m in timed],
        "warmup_step_s_each": [m["time/step_s"] for m in history[:args.warmup]],
        "seconds": {p: mean(f"time/{p}_s") for p in PARTS},
        "ppo_step_fraction": {p: mean(f"time/{p}_s") / step_s for p in PARTS},
        "response_length_mean": mean("rl/response_length"),
        "total_wall_s": wall,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"PPO speed: {result['parameters']:,} params, {args.questions}x{args.k} episodes/step, "
          f"{args.threads} thread(s), {result['precision']}, {len(timed)} timed steps after {args.warmup} warm-up")
    print(f"{'part':<10}{'s/step':>10}{'fraction':>10}")
    for p in PARTS:
        print(f"{p:<10}{result['seconds'][p]:>10.3f}{result['ppo_step_fraction'][p]:>10.1%}")
    print(f"{'step':<10}{step_s:>10.3f}{1:>10.0%}")
    print(f"episodes/s {result['episodes_per_s']:.1f}   mean response length {result['response_length_mean']:.1f} tokens")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
