"""ReFT-style PPO: `core` (pure math), `value_head` (policy + value on one backbone),
`rollout` (KV-cache sampling, greedy decoding), `trainer` (the accelerate loop, checkpoints, guards).
"""
