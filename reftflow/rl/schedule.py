"""Which questions each RL step trains on, and the seeds each step draws from.

Randomness is reseeded every step from (seed, step, rank), so a resumed run replays exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import hashlib
import random


def mix(*parts) -> int:
    """A 63-bit seed from any parts, stable across processes and Python runs."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class QuestionSchedule:
    """A seeded pass over the data, epoch by epoch: step s takes the next `per_step` questions, and
    this process keeps every `world_size`-th of them."""

    def __init__(self, num_questions: int, per_step: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.per_step, self.seed, self.rank, self.world_size = num_questions, per_step, seed, rank, world_size
        self._perms: dict[int, list[int]] = {}

    def __call__(self, step: int) -> list[int]:
        """This process's question indices for `step` (1-based)."""
        picked = []
        for pos in range((step - 1) * self.per_step, step * self.per_step):
            epoch = pos // self.n
            if epoch not in self._perms:
                perm = list(range(self.n))
                random.Random(mix(self.seed, "epoch", epoch)).shuffle(perm)
                self._perms = {**{e: p for e, p in self._perms.items() if e >= epoch - 1}, epoch: perm}
            picked.append(self._perms[epoch][pos % self.n])
        return picked[self.rank :: self.world_size]
