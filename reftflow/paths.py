"""Where each stage reads and writes, relative to the project root (the DVC repo)."""

from pathlib import Path

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
TRAIN = PREPARED / "train.jsonl"
VAL = PREPARED / "val.jsonl"
SFT_DATA = PREPARED / "sft.jsonl"
"""the extra worked examples of `data.sft_path` (empty when there is none)."""
BASE_MODEL = Path("models/base")
"""the base model's identity (source.json), and a GGUF converted to safetensors."""
SFT_MODEL = Path("models/sft")
RL_MODEL = Path("models/rl")
METRICS = Path("metrics")
PREPARE_METRICS = METRICS / "prepare.json"
SFT_METRICS = METRICS / "sft.json"
RL_METRICS = METRICS / "rl.json"
EVAL_METRICS = METRICS / "eval.json"
GATE_METRICS = METRICS / "gate.json"
PREDICTIONS = Path("data/predictions/val.jsonl")
GATE_REPORT = METRICS / "gate.md"
PLOTS = Path("plots")
SFT_LOSS = PLOTS / "sft_loss.csv"
RL_CURVE = PLOTS / "rl_curve.csv"
CHECKPOINTS = Path("checkpoints")
