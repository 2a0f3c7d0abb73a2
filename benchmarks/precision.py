"""float32 against bf16 autocast on this machine: what `model.bf16: auto` picks, and what it costs.

    python benchmarks/precision.py            # the default tiny model and a SmolLM2-135M-shaped one (~4 min)
    python benchmarks/precision.py --quick    # tiny sizes, a smoke test

For each model shape (random init, no download) it times, in float32 and under bf16 autocast
(`reftflow.precision.autocast`, the context every stage uses), a training step (forward, backward and
AdamW on a batch of `--batch` sequences of `--seq` tokens) and a greedy `generate` of `--new-tokens`
tokens for `--batch` prompts. The two precisions alternate round by round after an untimed warm-up
round each (cold shapes are 3-5x slower), so machine noise hits both alike; the table gives the median
of `--rounds` rounds and bf16's time over float32's. It says whether torch reports native bf16 here,
which is what `auto` decides on; the ratio is what that decision costs or buys for each size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, hidden, layers, heads, kv heads, intermediate, vocab): the default's tiny model (reftflow's
# ModelConfig defaults, its character vocabulary) and SmolLM2-135M's shape (its config.json)
SHAPES = {"tiny (default)": (144, 4, 4, 4, 384, 64), "smollm2-135m shape": (576, 30, 9, 3, 1536, 49152)}
QUICK_SHAPES = {"tiny (default)": (144, 4, 4, 4, 384, 64), "small": (256, 4, 4, 4, 512, 512)}


def build(shape: tuple[int, ...], seed: int):
    """A Llama-style causal LM of `shape`, random init."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, inter, vocab = shape
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=heads, num_key_value_heads=kv_heads,
                                        intermediate_size=inter, max_position_embeddings=2048,
                                        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1))


def time_round(model, optimizer, batch, bf16: bool, new_tokens: int) -> dict[str, float]:
    """Seconds for one training step and one greedy generate, in the given precision."""
    import torch

    from reftflow import precision

    device = torch.device("cpu")
    start = time.perf_counter()
    with precision.autocast(device, bf16):
        loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad(), precision.autocast(device, bf16):
        model.generate(input_ids=batch[:, :8], attention_mask=torch.ones_like(batch[:, :8]), do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return {"train_step_s": train_s, "generate_s": time.perf_counter() - start}


def measure(shape: tuple[int, ...], args) -> dict:
    """Median seconds per precision and bf16's ratio over float32, for one model shape."""
    import torch

    model = build(shape, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = torch.randint(2, shape[-1], (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed))
    times: dict[str, dict[str, list[float]]] = {"float32": {}, "bf16": {}}
    for rnd in range(args.rounds + 1):
        for name, bf16 in (("float32", False), ("bf16", True)):
            t = time_round(model, optimizer, batch, bf16, args.new_tokens)
            if rnd:  # round 0 warms both precisions' shapes up, untimed
                for key, value in t.items():
                    times[name].setdefault(key, []).append(value)
    medians = {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in times.items()}
    ratio = {k: medians["bf16"][k] / medians["float32"][k] for k in medians["float32"]}
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "median_s": medians, "bf16_over_float32": ratio}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per precision (after one untimed)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per training step, prompts per generate")
    ap.add_argument("--seq", type=int, default=64, help="tokens per training sequence")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens each generate makes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here: 2 for one process)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small shapes, 2 rounds: a smoke test")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.batch, args.seq, args.new_tokens = 2, 4, 16, 4

    import torch

    from reftflow import precision

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    result = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": precision.native_bf16(cpu),
              "auto_picks": precision.name(precision.use_bf16("auto", cpu)), "threads": args.threads,
              "batch": args.batch, "seq": args.seq, "new_tokens": args.new_tokens, "rounds": args.rounds,
              "torch": torch.__version__, "shapes": {}}
    for name, shape in shapes.items():
        print(f"precision: {name} ...", file=sys.stderr, flush=True)
        result["shapes"][name] = measure(shape, args)

    print(f"CPU: torch capability {result['cpu_capability']}, native bf16: {result['native_bf16']} "
          f"(model.bf16: auto picks {result['auto_picks']}); {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'model':<22}{'params':>10}{'train f32':>11}{'train bf16':>12}{'ratio':>7}{'gen f32':>9}{'gen bf16':>10}{'ratio':>7}")
    for name, row in result["shapes"].items():
        m, r = row["median_s"], row["bf16_over_float32"]
        print(f"{name:<22}{row['parameters'] / 1e6:>9.1f}M{m['float32']['train_step_s']:>10.3f}s"
              f"{m['bf16']['train_step_s']:>11.3f}s{r['train_step_s']:>6.2f}x{m['float32']['generate_s']:>8.3f}s"
              f"{m['bf16']['generate_s']:>9.3f}s{r['generate_s']:>6.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
