"""PPO math for ReFT: pure tensor functions, no I/O, no logging, no config parsing.

Shapes follow verl's `core_algos.py`: every token-level tensor is `(bs, response_length)` and
`mask` (the response mask, 1 up to and including EOS) says which positions are real tokens.
Loss functions return `(loss, metrics)` where metrics are detached 0-d tensors; the trainer
averages and logs them in one place.
"""

from __future__ import annotations

import torch

from reftflow.tensors import masked_mean

__all__ = [
    "masked_var",
    "masked_whiten",
    "compute_gae",
    "group_advantages",
    "compute_advantages",
    "ADVANTAGE_ESTIMATORS",
    "kl_penalty",
    "shape_rewards",
    "policy_loss",
    "value_loss",
]


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected when there are at least two)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; masked-out positions come back as 0.

    `shift_mean=False` keeps the mean (only rescales), as TRL does for rewards.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over response tokens.

    Args:
        rewards: (bs, T) token-level rewards (KL penalty per token + score at the last token).
        values: (bs, T) value of the state before each response token.
        mask: (bs, T) 1 for real tokens. Masked positions are skipped: they neither bootstrap
            nor receive advantage, so values there are ignored (verl's invariant); the value after
            the last real token is 0 (the episode ends at EOS or at the length limit).
        gamma, lam: discount and GAE lambda.

    Returns:
        (advantages, returns), both (bs, T) and 0 at masked positions; returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    bs, T = rewards.shape
    next_value = torch.zeros(bs, dtype=values.dtype, device=values.device)
    last_gae = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    for t in reversed(range(T)):  # T is a few dozen tokens: a loop over T, vectorised over the batch
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * last_gae
        # at a masked position carry the running quantities through unchanged
        last_gae = m * gae + (1 - m) * last_gae
        next_value = m * values[:, t] + (1 - m) * next_value
        advantages[:, t] = m * gae
    returns = (advantages + values) * mask
    return advantages, returns


def group_advantages(
    returns: torch.Tensor, mask: torch.Tensor, group_size: int, estimator: str = "group_zscore", eps: float = 1e-6
) -> torch.Tensor:
    """Outcome advantages with the other samples of the same question as the baseline, no critic.

    Rows come in groups of `group_size` K (K samples per question). Each sequence's return is
    compared with its group's:
      group_zscore: (R - mean_group) / (std_group + eps)   (GRPO: Shao et al., 2024, DeepSeekMath §4.1.2)
      leave_one_out: R - mean of the other K-1 returns     (RLOO: Ahmadian et al., 2024, "Back to Basics")
    and the advantage is given to every real token of the sequence (verl's `adv_estimator`).
    A question whose K samples all score the same gets advantage 0: it carries no contrast, where a
    critic that has not yet learnt that question's difficulty would give it noise.

    Args:
        returns: (bs,) sequence returns (score plus the summed per-token KL penalty).
        mask: (bs, T) response mask.
    """
    if returns.shape[0] % group_size:
        raise ValueError(f"{returns.shape[0]} returns do not split into groups of {group_size}")
    g = returns.reshape(-1, group_size)
    if estimator == "group_zscore":
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.ones_like(g[:, :1])
        adv = (g - g.mean(dim=1, keepdim=True)) / (std + eps)
    elif estimator == "leave_one_out":
        if group_size < 2:
            raise ValueError("leave_one_out needs at least 2 samples per question")
        adv = (g - g.mean(dim=1, keepdim=True)) * group_size / (group_size - 1)
    else:
        raise ValueError(f"unknown group estimator {estimator!r} (expected group_zscore or leave_one_out)")
    return adv.reshape(-1, 1) * mask.to(returns.dtype)


ADVANTAGE_ESTIMATORS = ("gae", "group_zscore", "leave_one_out")


def compute_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    estimator: str = "gae",
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    negative_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token advantages and returns for PPO's update, by estimator (verl's `adv_estimator` choice).

    gae: the critic's GAE (`compute_gae`), then whitened over the batch when `whiten` (TRL's PPO and
        verl whiten GAE advantages: the critic's scale drifts as it learns).
    group_zscore / leave_one_out: each sequence's return (score + summed KL penalty) against the other samples of its
        question (`group_advantages`); `values` is not used. These are never whitened again: the
        group baseline already centres them (and group_zscore divides by the group's std), and a second,
        batch-wide whitening would only mix one question's scale into another's.
    Then negative advantages are multiplied by `negative_scale` (1: plain PPO; below 1 pushes wrong
    answers down less than it pulls right ones up).

    Args:
        rewards: (bs, T) token rewards (`shape_rewards`).
        values: (bs, T) old values (gae only; may be None for the group estimators).
        mask: (bs, T) response mask.
        group_size: K samples per question, rows in runs of K (group estimators).

    Returns:
        (advantages, returns), both (bs, T) and 0 where mask is 0. For the group estimators the returns are
        the reward-to-go (gamma 1), a metric only: nothing regresses on them.
    """
    if estimator == "gae":
        if values is None:
            raise ValueError("the gae estimator needs values")
        advantages, returns = compute_gae(rewards, values * mask, mask, gamma, lam)
        if whiten:
            advantages = masked_whiten(advantages, mask)
    elif estimator in ("group_zscore", "leave_one_out"):
        advantages = group_advantages(rewards.sum(1), mask, group_size, estimator)
        returns = rewards.flip(1).cumsum(1).flip(1) * mask
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r} (expected one of {ADVANTAGE_ESTIMATORS})")
    if negative_scale != 1.0:
        advantages = torch.where(advantages < 0, advantages * negative_scale, advantages)
    return advantages, returns


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    Estimators from John Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html),
    with log r = ref_logp - logp:
      k1 = -log r               (unbiased, high variance, can be negative per sample)
      k2 = (log r)^2 / 2        (biased, low variance, >= 0)
      k3 = (r - 1) - log r      (unbiased, low variance, >= 0)
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)  # exp() of a huge ratio would overflow to inf
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (expected k1, k2 or k3)")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(bs,) index of the last position where mask is 1 (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * (mask > 0)).amax(dim=1)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Token rewards: -kl_coef * kl on every real token, plus the grader score on the last one.

    The ReFT/TRL/verl convention (TRL `non_score_reward = -kl_coef * kl`, then the score at the
    last token; verl `reward_tensor[i, valid_response_length - 1] = score`).

    Args:
        scores: (bs,) sequence scores from the grader.
        kl: (bs, T) per-token KL estimates (see `kl_penalty`).
        mask: (bs, T) response mask.
    """
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al., 2017, eq. 7), as a loss to minimise.

    loss = mean over real tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "ppo/clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            # k3 estimate of KL(old || new): http://joschu.net/blog/kl-approx.html (as cleanrl does)
            "ppo/approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "ppo/ratio_mean": masked_mean(ratio, mask),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 / TRL / verl): 0.5 * mean max((v - R)^2, (v_clip - R)^2)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        metrics = {
            "value/clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask),
            "value/mean": masked_mean(values, mask),
            "value/error": masked_mean(err, mask),
        }
    return loss, metrics
