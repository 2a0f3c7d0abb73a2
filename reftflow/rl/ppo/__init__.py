"""ReFT-style PPO: `core` (pure math), `value_head` (policy + value on one backbone), `trainer` (the
accelerate loop, checkpoints, guards). Sampling lives in `reftflow.generation`, the scoring forwards in
`reftflow.forward`.
"""
