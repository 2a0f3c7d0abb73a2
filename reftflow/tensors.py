"""Tensor helpers below both generation/scoring and the RL algorithms: masked means and what a forward's
logits say about its tokens. Every token-level tensor is `(bs, T)`; `mask` is 1 on real tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_mean", "logprobs_from_logits", "entropy_from_logits"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them when dim is None)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(bs, T, V) logits and (bs, T) token ids → (bs, T) log-probabilities of those tokens."""
    logits = logits.float()
    # gather then subtract logsumexp: no (bs, T, V) log-softmax tensor is materialised
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(bs, T, V) logits → (bs, T) entropy of the categorical distribution, in nats."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
