"""reftflow: self-hosted reinforcement fine-tuning (SFT warm-up → ReFT-style PPO → evaluate → gate)."""

__version__ = "0.1.0"
