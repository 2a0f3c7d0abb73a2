"""GAE against a plain Python loop over the real tokens of each row (verl/cleanrl-style equivalence test)."""

import torch

from reftflow.rl.ppo.core import compute_gae


def reference_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE per row, over the masked-in positions only; 0 elsewhere."""
    bs, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(bs)]
    ret = [[0.0] * T for _ in range(bs)]
    for i in range(bs):
        idx = [t for t in range(T) if mask[i][t] > 0]
        gae, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[i][t] + gamma * next_value - values[i][t]
            gae = delta + gamma * lam * gae
            adv[i][t] = gae
            ret[i][t] = gae + values[i][t]
            next_value = values[i][t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


def _random_case(seed, bs=6, T=11, holes=False):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(bs, T, generator=g, dtype=torch.float64)
    values = torch.randn(bs, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (bs,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()
    if holes:
        mask = mask * (torch.rand(bs, T, generator=g) > 0.3).double()
        mask[:, 0] = 1.0
    return rewards, values, mask


def test_gae_matches_reference_loop():
    for seed in range(5):
        for gamma, lam in [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.5, 0.0)]:
            rewards, values, mask = _random_case(seed)
            adv, ret = compute_gae(rewards, values, mask, gamma, lam)
            ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
            torch.testing.assert_close(adv, ref_adv)
            torch.testing.assert_close(ret, ref_ret)


def test_gae_skips_holes_in_the_mask():
    rewards, values, mask = _random_case(7, holes=True)
    adv, ret = compute_gae(rewards, values, mask, 0.97, 0.9)
    ref_adv, ref_ret = reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.97, 0.9)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_gae_ignores_values_and_rewards_at_masked_positions():
    rewards, values, mask = _random_case(3)
    adv, ret = compute_gae(rewards, values, mask, 1.0, 0.95)
    noise = torch.randn_like(values) * 100 * (1 - mask)
    adv2, ret2 = compute_gae(rewards + noise, values + noise, mask, 1.0, 0.95)
    torch.testing.assert_close(adv, adv2)
    torch.testing.assert_close(ret, ret2)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_gae_lambda_one_is_monte_carlo():
    # gamma = lam = 1: the advantage is the sum of future rewards minus V(s_t)
    rewards = torch.tensor([[0.0, -0.1, 0.5, 9.0]])
    values = torch.tensor([[0.2, 0.3, 0.4, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = compute_gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[0.4, 0.4, 0.5, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.2, 0.1, 0.1, 0.0]]))
