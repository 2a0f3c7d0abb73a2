"""Regime probes on the dev split: the single runs behind docs/regime.md section 6.

    python benchmarks/regime_probe.py warm --name plateau                      # SFT warm-up (params.yaml)
    python benchmarks/regime_probe.py sft  --name cont --warm plateau --seconds 120 --sft '{"max_steps": 360}'
    python benchmarks/regime_probe.py rl   --name v1 --warm plateau --seconds 120 --rl '{"algorithm": "ppo", "steps": 300, "ppo": {"lr": 3e-5}}'
    python benchmarks/regime_probe.py rl   --name r1 --warm plateau --seconds 120 --rl '{"algorithm": "raft", "steps": 600}'
    python benchmarks/regime_probe.py raft --name raft --warm plateau --seconds 120 --sft '{"max_steps": 360}'

Every run reads the regime from params.yaml (or --params), changed by JSON overrides per section
(--data, --model, --sft, --rl; nested mappings merge key by key), on the split of --data-seed (101: the dev split; the benchmark's
table uses 0, so tuning here never sees its held-out questions). Models go to --workdir by name, so
later runs start from a named warm-up. Each result prints one line and is appended as JSON to
<workdir>/probe.jsonl. "greedy" is held-out greedy accuracy (full marks), "mean_score" the mean grader score.

  warm  SFT from scratch on the worked items.
  sft   SFT continued from --warm for --seconds (a time limit; --sft sets the schedule's steps).
  rl    RL (`rl.algorithm`: ppo, grpo or raft) from --warm for --seconds of training, evaluated every
        --eval-every steps.
  raft  one round of rejection-sampling fine-tuning (RAFT/ReST/STaR): 4 samples of every training
        question, the first correct one kept for each answer-only question, then SFT from --warm on
        the worked items plus those for --seconds. A probe of how much the reward can teach.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reftflow.config import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("mode", choices=["warm", "sft", "rl", "raft"])
    ap.add_argument("--name", required=True, help="this run's model dir under --workdir")
    ap.add_argument("--warm", help="the warm-up (a name under --workdir) that sft/rl/raft start from")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    for section in ("data", "model", "sft", "rl", "grader"):
        ap.add_argument(f"--{section}", default="{}", help=f"JSON overrides of params.yaml's {section} section")
    ap.add_argument("--seconds", type=float, default=120.0, help="training time of sft/rl/raft")
    ap.add_argument("--eval-every", type=int, default=40, help="rl: held-out evaluation every N steps")
    ap.add_argument("--data-seed", type=int, default=101, help="split seed (101: dev; never the benchmark's 0)")
    ap.add_argument("--seed", type=int, default=0, help="run seed of sft/rl/raft")
    ap.add_argument("--threads", type=int, help="torch threads (default: model.torch_threads)")
    ap.add_argument("--workdir", default=str(ROOT / "benchmarks" / "results" / "regime"))
    args = ap.parse_args(argv)
    if args.mode != "warm" and not args.warm:
        ap.error(f"{args.mode} needs --warm NAME")

    p = load_params(args.params)
    over = {s: json.loads(getattr(args, s)) for s in ("data", "model", "sft", "rl", "grader")}

    def merge(base: dict, update: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in update.items()}}

    def section(cfg, **update):
        """`cfg` with the overrides, validated (nested sections such as rl.raft become objects)."""
        return type(cfg).model_validate(merge(cfg.model_dump(), update))

    data_cfg = section(p.data, **over["data"])
    model_cfg = section(p.model, **over["model"])
    sft_cfg = section(p.sft, logging_steps=10**9, **over["sft"])
    rl_cfg = section(p.rl, checkpoint_every=0, eval_interval=0, **over["rl"])

    from transformers.utils import logging as hf_logging

    from reftflow.data.prepare import build_splits
    from reftflow.graders import build_grader
    from reftflow.modeling import device_and_precision, load_model
    from reftflow.generation import generate_greedy
    from reftflow.prompting import render_prompt
    from reftflow.sft import train_sft

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads is not None:
        model_cfg = model_cfg.model_copy(update={"torch_threads": args.threads})
    device, bf16 = device_and_precision(model_cfg)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train, val, report = build_splits(data_cfg, args.data_seed)
    grader = build_grader(merge(p.grader, over["grader"]) if isinstance(p.grader, dict) else p.grader, base_dir=ROOT)
    out_dir, warm = work / args.name, work / args.warm if args.warm else None

    def grade(texts, items):
        return [r.score for r in grader.grade_many(texts, items)]

    def greedy(lm, tok) -> dict[str, float]:
        """Held-out greedy accuracy (full marks) and mean grader score."""
        outs = generate_greedy(lm, tok, [render_prompt(r, tok) for r in val], rl_cfg.max_new_tokens, 100,
                               bf16=bf16)
        scores = grade(outs, [r.item for r in val])
        shares = {}
        if grader.type == "ranked_list":  # how the lists look, beyond their score (docs/regime.md section 8)
            from reftflow.graders.ranked import list_shares

            shares = list_shares(grader, outs, [r.item for r in val])
        return {"greedy": sum(s >= 1.0 for s in scores) / len(val), "mean_score": sum(scores) / len(val), **shares}

    def record(**fields) -> dict:
        row = {"mode": args.mode, "name": args.name, "warm": args.warm, "data_seed": args.data_seed,
               "seed": args.seed, "overrides": over, **fields}
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if k != "overrides"), flush=True)
        with open(work / "probe.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    if args.mode == "warm":
        s = train_sft(train, model_cfg, sft_cfg, out_dir, seed=args.data_seed)
        return record(worked=report["train_worked"], steps=int(s["global_steps"]), train_s=s["wall_s"],
                      **greedy(*load_model(out_dir)))

    if args.mode == "rl":
        from reftflow.rl import RLRun, build_algorithm

        trainer = build_algorithm(RLRun(warm, train, rl_cfg, grader, out_dir, args.seed, model_cfg))
        t0, eval_s, window, row = time.perf_counter(), 0.0, [], {}
        for m in trainer.train():
            window.append(m)
            train_s = time.perf_counter() - t0 - eval_s
            if m["step"] % args.eval_every == 0 or train_s >= args.seconds:
                t = time.perf_counter()
                held_out = greedy(trainer.lm, trainer.tokenizer)
                eval_s += time.perf_counter() - t

                def mean(k):
                    return sum(x[k] for x in window) / len(window)

                row = record(step=int(m["step"]), train_s=train_s, **held_out, sample=mean("rl/accuracy"),
                             kl=mean("rl/kl") if "rl/kl" in m else None,
                             entropy=mean("rl/entropy") if "rl/entropy" in m else None,
                             episodes_per_s=mean("rl/episodes_per_s"))
                window = []
                if train_s >= args.seconds:
                    break
        trainer.save()
        return row

    if args.mode == "raft":
        import torch

        from reftflow import generation as rollout
        from reftflow.precision import autocast

        model, tok = load_model(warm)
        model.eval()
        torch.manual_seed(args.seed)
        tokens = tok([render_prompt(r, tok) for r in train])["input_ids"]
        K, t0, correct, solved, extra = 4, time.perf_counter(), 0, 0, []
        for start in range(0, len(train), 32):
            idx = range(start, min(start + 32, len(train)))
            with autocast(device, bf16):
                ro = rollout.sample(model, tok, [tokens[i] for i in idx for _ in range(K)], rl_cfg.max_new_tokens,
                                    1.0, group_size=K)
            scores = grade(ro.texts, [train[i].item for i in idx for _ in range(K)])
            for j, i in enumerate(idx):
                good = [ro.texts[j * K + k] for k in range(K) if scores[j * K + k] >= 1.0]
                correct, solved = correct + len(good), solved + bool(good)
                if good and not train[i].completion:
                    extra.append(dataclasses.replace(train[i], completion=good[0]))
        sample_s = time.perf_counter() - t0
        worked = [r for r in train if r.completion]
        s = train_sft(worked + extra, model_cfg, sft_cfg, out_dir, seed=args.seed, init_from=warm,
                      time_limit_s=args.seconds)
        return record(sample_accuracy=correct / (K * len(train)), pass_at_4=solved / len(train), added=len(extra),
                      sample_s=sample_s, steps=int(s["global_steps"]), train_s=s["wall_s"],
                      **greedy(*load_model(out_dir)))

    s = train_sft(train, model_cfg, sft_cfg, out_dir, seed=args.seed, init_from=warm, time_limit_s=args.seconds)
    return record(steps=int(s["global_steps"]), train_s=s["wall_s"], **greedy(*load_model(out_dir)))


if __name__ == "__main__":
    main()
