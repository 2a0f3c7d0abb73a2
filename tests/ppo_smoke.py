"""A tiny end-to-end PPO run on the synthetic task: the subprocess the resume and multi-process tests drive.

    python -m tests.ppo_smoke --workdir /tmp/run --make-policy
    CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 -m tests.ppo_smoke --workdir /tmp/run

Writes, under --workdir: `sft/` (with --make-policy), `ppo/` (the final policy), `checkpoints/`
(removed once the run has saved, as the rl stage does), `metrics.jsonl` (one line per step, main
process), and `rank{r}.json` per process with its share of each step's questions and a hash of the
final policy + value head parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from reftflow.data.synthetic import generate
from tests.helpers import DIGITS, TINY, make_policy, rl_config


def parameter_hash(module: torch.nn.Module | dict) -> str:
    """sha256 over a module's (or a state dict's) tensors, by name."""
    h = hashlib.sha256()
    state = module if isinstance(module, dict) else module.state_dict()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--make-policy", action="store_true", help="create workdir/sft first (single process only)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--minibatch", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.0, help="pause after each step (lets a test kill mid-run)")
    ap.add_argument("--fsdp", action="store_true", help="model.fsdp: shard the policy over the processes")
    ap.add_argument("--keep-checkpoints", action="store_true", help="leave checkpoints/ for a later run to resume")
    args = ap.parse_args(argv)

    from reftflow.rl import RLRun
    from reftflow.rl.ppo.trainer import PPOTrainer

    work = Path(args.workdir)
    if args.make_policy:
        make_policy(work / "sft")
    cfg = rl_config("ppo", steps=args.steps, questions_per_step=args.questions, samples_per_question=args.k,
                    max_new_tokens=args.max_new_tokens, checkpoint_every=args.checkpoint_every,
                    minibatch_size=args.minibatch, lr=args.lr)
    model = TINY.model_copy(update={"torch_threads": args.threads, "fsdp": args.fsdp})
    trainer = PPOTrainer(RLRun(work / "sft", generate(24, seed=1), cfg, DIGITS, work / "ppo", args.seed, model,
                               work / "checkpoints"))
    for metrics in trainer.train():
        with open(work / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if args.sleep:
            time.sleep(args.sleep)
    trainer.save()
    trainer.accelerator.wait_for_everyone()
    if trainer.rank == 0 and not args.keep_checkpoints:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    info = {"rank": trainer.rank, "world_size": trainer.world_size, "questions_per_step": len(trainer.questions(1)),
            "param_hash": _final_hash(trainer), "step": trainer.step, "sharded": trainer.sharded,
            "local_numel": sum(getattr(p, "_local_tensor", p).numel() for p in trainer.model.parameters()),
            "numel": sum(p.numel() for p in trainer.model.parameters()),
            "distributed_type": str(trainer.accelerator.distributed_type), "backend": str(trainer.accelerator.state.backend)}
    (work / f"rank{trainer.rank}.json").write_text(json.dumps(info))


def _final_hash(trainer) -> str | None:
    """The trained policy + value head's hash: every process's own copy under DDP; under FSDP the
    whole state gathered (a collective), on rank 0 only."""
    if not trainer.sharded:
        return parameter_hash(trainer.policy)
    from reftflow.fsdp import full_state

    state = full_state(trainer.model)[0]
    return parameter_hash(state) if state else None


if __name__ == "__main__":
    main()
