"""A real pretrained model through the chain: SmolLM2-135M-Instruct (the smollm2 example), CPU or GPU.

    python benchmarks/real_model.py                 # every arm (~25 min on 2 CPU cores)
    python benchmarks/real_model.py --ppo-steps 3 --sft-steps 2 --num-val 8 --out /tmp/r.json   # a smoke run

Arms, on the smollm2 example's task (reftflow/examples/smollm2/params.yaml: arithmetic word problems
asked through the chat template) and its held-out split:
  zero_shot                 the converted base model, greedy;
  sft / sft_lora            the SFT warm-up on the worked items, full fine-tuning / LoRA (`model.lora`);
  ppo / ppo_lora            our PPO from that warm-up, `--ppo-steps` steps, timed: T;
  grpo / grpo_lora          TRL GRPOTrainer from the same warm-up, same grader, K, batch, lr, for T seconds.
Each arm runs in its own process (so its peak RSS is its own) and reports: held-out pass rate and mean
score (greedy, evaluate.max_new_tokens), RL episodes/s (mean over steps after the first two: cold
shapes), peak RSS (after training, and after the evaluation too), and wall time (the arm's training;
evaluation is timed apart). The full fine-tuning arms are the example as shipped; the LoRA arms add
adapters (r 16, alpha 32, every linear layer) and RL at `--lora-lr` (5e-5: adapters start at zero). The GGUF is
converted once (the base stage's code) before the arms. One table on stdout, JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reftflow.config import LoRAConfig  # noqa: E402

EXAMPLE = ROOT / "reftflow" / "examples" / "smollm2" / "params.yaml"
LORA = LoRAConfig(r=16, alpha=32.0, dropout=0.0, target_modules="all-linear")
ARMS = ["zero_shot", "sft", "sft_lora", "ppo", "ppo_lora", "grpo", "grpo_lora"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load(args):
    from reftflow.config import load_params

    params = load_params(EXAMPLE)
    data = params.data.model_copy(update={"num_val": args.num_val})
    rl = params.rl.updated(steps=args.ppo_steps, checkpoint_every=0, eval_interval=0)
    sft = params.sft.model_copy(update={"max_steps": args.sft_steps})
    return params.model_copy(update={"data": data, "rl": rl, "sft": sft})


def arm_main(args) -> None:
    """One arm, in this process; writes its result to args.result."""
    from reftflow.data.records import read_records
    from reftflow.evaluation import evaluate_model
    from reftflow.graders import build_grader
    params, work = load(args), Path(args.work)
    lora = args.arm.endswith("_lora")
    model_cfg = params.model.model_copy(update={"torch_threads": args.threads, **({"lora": LORA} if lora else {})})
    train, val = read_records(work / "train.jsonl"), read_records(work / "val.jsonl")
    grader = build_grader(params.grader)
    out = work / args.arm
    result: dict = {"arm": args.arm, "lora": lora}
    t0 = time.perf_counter()
    if args.arm == "zero_shot":
        out = work / "base"
    elif args.arm.startswith("sft"):
        from reftflow.sft import train_sft

        summary = train_sft(train, model_cfg, params.sft, out, params.seed, base_dir=work / "base")
        result.update(steps=summary["global_steps"], trainable_parameters=summary["trainable_parameters"])
    else:
        from reftflow.rl import RLRun, build_algorithm

        algorithm = args.arm.split("_")[0]
        # the example fine-tunes every weight; the LoRA arms swap in adapters and their larger lr
        cfg = params.rl.updated(algorithm=algorithm, **({"lr": args.lora_lr} if lora else {}))
        policy = work / ("sft_lora" if lora else "sft")
        algo = build_algorithm(RLRun(policy, train, cfg, grader, out, params.seed, model_cfg))
        history = []
        for m in algo.train():
            history.append(m)
            if args.time_limit and time.perf_counter() - t0 >= args.time_limit:
                break
        algo.save()
        warm = history[2:] or history
        result.update(steps=len(history), episodes_per_s=statistics.mean(m["rl/episodes_per_s"] for m in warm),
                      train_reward_mean=statistics.mean(m["train_reward_mean"] for m in history))
    result["train_s"] = time.perf_counter() - t0
    result["train_peak_rss_mb"] = peak_rss_mb()  # before the evaluation's own generate() buffers
    t1 = time.perf_counter()
    ev = evaluate_model(out, val, grader, params.evaluate.max_new_tokens, params.evaluate.batch_size, args.arm,
                        model_cfg=model_cfg)
    result.update(pass_rate=ev.metrics["pass_rate"], mean_score=ev.metrics["mean_score"],
                  eval_s=time.perf_counter() - t1, peak_rss_mb=peak_rss_mb(),
                  example=ev.rows[0]["output"] if ev.rows else "")
    Path(args.result).write_text(json.dumps(result))


def prepare(args, work: Path) -> dict:
    """The example's splits and the converted base model, once."""
    from reftflow.base_model import prepare_base, resolve
    from reftflow.data.prepare import build_splits
    from reftflow.data.records import write_jsonl

    params = load(args)
    train, val, report = build_splits(params.data, params.seed)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "val.jsonl", val)
    t0 = time.perf_counter()
    info = prepare_base(resolve(params.model.name_or_path), work / "base")
    return {"data": report, "base": info, "convert_s": time.perf_counter() - t0}


def run_arm(args, arm: str, work: Path, time_limit: float | None) -> dict:
    result = work / f"{arm}.json"
    cmd = [sys.executable, __file__, "--arm", arm, "--work", str(work), "--result", str(result),
           "--threads", str(args.threads), "--ppo-steps", str(args.ppo_steps), "--num-val", str(args.num_val),
           "--sft-steps", str(args.sft_steps), "--lora-lr", str(args.lora_lr)]
    if time_limit:
        cmd += ["--time-limit", f"{time_limit:.1f}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "process_s": time.perf_counter() - t0}


def print_table(r: dict) -> None:
    print(f"\nSmolLM2-135M-Instruct on the smollm2 example: {r['config']['num_val']} held-out questions, "
          f"{r['config']['ppo_steps']} PPO steps, {r['device']}, {r['config']['threads']} threads")
    print(f"{'arm':<10} {'pass rate':>9} {'score':>7} {'episodes/s':>10} {'steps':>5} {'train s':>8} "
          f"{'eval s':>7} {'train RSS MB':>12} {'peak RSS MB':>11}")
    for name in ARMS:
        a = r["arms"].get(name)
        if a:
            eps = f"{a['episodes_per_s']:.2f}" if "episodes_per_s" in a else "-"
            print(f"{name:<10} {a['pass_rate']:>9.3f} {a['mean_score']:>7.3f} {eps:>10} {int(a.get('steps', 0)):>5} "
                  f"{a['train_s']:>8.0f} {a['eval_s']:>7.0f} {a['train_peak_rss_mb']:>12.0f} {a['peak_rss_mb']:>11.0f}")
    for k, v in r["summary"].items():
        print(f"  {k}: {v:.2f}x" if " / " in k else f"  {k}: {v:+.3f}")


def summary(arms: dict) -> dict:
    s = {}
    for lora in ("", "_lora"):
        if f"ppo{lora}" in arms:
            s[f"ppo{lora} - sft{lora} pass rate"] = arms[f"ppo{lora}"]["pass_rate"] - arms[f"sft{lora}"]["pass_rate"]
        if f"grpo{lora}" in arms:
            s[f"ppo{lora} / grpo{lora} episodes/s"] = round(arms[f"ppo{lora}"]["episodes_per_s"]
                                                            / arms[f"grpo{lora}"]["episodes_per_s"], 2)
    if "ppo" in arms and "ppo_lora" in arms:
        s["ppo_lora / ppo training peak RSS"] = round(arms["ppo_lora"]["train_peak_rss_mb"]
                                                      / arms["ppo"]["train_peak_rss_mb"], 2)
    return s


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ppo-steps", type=int, default=20, help="PPO steps (the example's); their wall time is GRPO's "
                    "budget")
    ap.add_argument("--num-val", type=int, default=100, help="held-out questions")
    ap.add_argument("--sft-steps", type=int, default=-1, help="SFT steps (-1: the example's sft.epochs)")
    ap.add_argument("--lora-lr", type=float, default=5e-5, help="RL lr of the LoRA arms (the full fine-tuning "
                    "arms: the example's ppo.lr, 1e-5): adapters start at zero and take a larger step")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per arm (ignored on a GPU)")
    ap.add_argument("--arms", nargs="*", default=ARMS, choices=ARMS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_model.json"))
    # one arm in a child process (internal)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--time-limit", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from reftflow.env import apply_defaults

    apply_defaults()
    if args.arm:
        arm_main(args)
        return None
    import torch

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reftflow-real-") as tmp:
        work = Path(tmp)
        setup = prepare(args, work)
        print(f"[{time.perf_counter() - t0:5.0f} s] converted the GGUF in {setup['convert_s']:.0f} s", file=sys.stderr)
        arms: dict = {}
        for arm in [a for a in ARMS if a in args.arms]:
            # GRPO gets PPO's training time (same LoRA setting) as its budget
            ppo = arms.get("ppo_lora" if arm.endswith("_lora") else "ppo")
            limit = ppo["train_s"] if arm.startswith("grpo") and ppo else None
            arms[arm] = run_arm(args, arm, work, limit)
            a = arms[arm]
            print(f"[{time.perf_counter() - t0:5.0f} s] {arm}: pass rate {a['pass_rate']:.3f}, score "
                  f"{a['mean_score']:.3f}, {a['train_s']:.0f} s, peak RSS {a['peak_rss_mb']:.0f} MB", file=sys.stderr)
    result = {
        "config": {"ppo_steps": args.ppo_steps, "sft_steps": args.sft_steps, "num_val": args.num_val, "lora_lr": args.lora_lr,
                   "threads": args.threads,
                   "example": str(EXAMPLE.relative_to(ROOT))},
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "setup": setup, "arms": arms, "summary": summary(arms), "wall_s": time.perf_counter() - t0,
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_s'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
