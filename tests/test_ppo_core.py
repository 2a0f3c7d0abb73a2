"""PPO math on hand-computed cases: losses with the clip active and inactive, KL estimators, whitening."""

import math

import pytest
import torch

from reftflow.rl.ppo.core import group_advantages, kl_penalty, masked_whiten, policy_loss, shape_rewards, value_loss
from reftflow.tensors import entropy_from_logits, logprobs_from_logits, masked_mean


def test_masked_mean_ignores_masked_entries():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 3.0]))


def test_masked_whiten_has_zero_mean_unit_std_on_the_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * 3 + 5
    mask = (torch.rand(4, 9, generator=g) > 0.4).float()
    w = masked_whiten(x, mask)
    vals = w[mask.bool()]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert vals.std().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(w[~mask.bool()] == 0)
    # shift_mean=False rescales only: the mean is kept
    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(x[mask.bool()].mean().item(), abs=1e-5)


def test_kl_estimators_on_hand_values():
    # pi(token) = 0.5, pi_ref(token) = 0.25  ->  log r = log(pi_ref / pi) = log 0.5
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(0.5)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(-lr)  # 0.6931
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * lr**2)  # 0.2402
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - lr)  # 0.1931
    same = torch.tensor([-1.3])
    for est in ("k1", "k2", "k3"):
        assert kl_penalty(same, same, est).item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def test_k3_is_finite_for_extreme_ratios():
    out = kl_penalty(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(out).all()


def test_shape_rewards_puts_score_on_last_valid_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    r = shape_rewards(torch.tensor([1.0, 0.1]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 1.0 - 0.15, 0.0], [0.1 - 0.5, 0.0, 0.0, 0.0]]))


def test_policy_loss_hand_case_clip_active_and_inactive():
    old = torch.zeros(1, 4)
    # token 0: ratio 1.5, A=+1 -> clip active, objective uses 1.2  -> loss -1.2
    # token 1: ratio 1.5, A=-1 -> pessimistic unclipped term 1.5   -> loss  1.5
    # token 2: ratio 1.1, A=+2 -> inside the clip range            -> loss -2.2
    # token 3: masked out (huge numbers must not matter)
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.1, 50.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, 1e6]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, m = policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 2.2) / 3)
    assert m["ppo/clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dlogp of -A * ratio = -A * ratio / 3 where unclipped; 0 where the clip is active or masked
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5 / 3, -2.2 / 3, 0.0]]))


def test_policy_loss_equals_plain_pg_on_policy():
    logp = torch.randn(3, 5)
    adv = torch.randn(3, 5)
    mask = torch.ones(3, 5)
    loss, m = policy_loss(logp, logp.clone(), adv, mask, 0.2)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert m["ppo/clipfrac"].item() == 0.0 and m["ppo/approx_kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_value_loss_hand_case():
    # token 0: v=1.0, old=0.5, R=2.0 -> clipped v=0.7, errors 1.0 vs 1.69 -> 1.69 (clip counted)
    # token 1: v=0.6, old=0.5, R=0.0 -> inside the clip range, both errors 0.36
    values = torch.tensor([[1.0, 0.6, 7.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.36) / 2)
    assert m["value/clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # clipped token: no gradient to v; unclipped: d/dv 0.5 * (v - R)^2 / 2 = (v - R) / 2
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.3, 0.0]]))


def test_entropy_and_logprobs_from_logits():
    V = 7
    uniform = torch.zeros(2, 3, V)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), math.log(V)))
    peaked = torch.full((1, 1, V), -1e4)
    peaked[..., 2] = 0.0
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-5)
    logits = torch.randn(2, 3, V)
    tokens = torch.randint(0, V, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected)


def test_group_advantages_compare_each_sample_with_its_question():
    # two questions, K = 3: scores (1, 0, 0) and (1, 1, 1)
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    grpo = group_advantages(returns, mask, 3, "group_zscore")
    std = torch.tensor([1.0, 0.0, 0.0]).std().item()  # Bessel-corrected, as torch.std
    assert grpo[0, 0].item() == pytest.approx((2 / 3) / std, rel=1e-4)
    assert grpo[1, 0].item() == pytest.approx((-1 / 3) / std, rel=1e-4)
    assert torch.all(grpo[3:] == 0)  # all samples equal: no contrast, no gradient
    assert grpo[0, 2].item() == 0 and grpo[2, 2].item() == grpo[2, 0].item()  # every real token, only those
    rloo = group_advantages(returns, mask, 3, "leave_one_out")
    assert rloo[0, 0].item() == pytest.approx(1.0 - 0.0)  # 1 minus the mean of the other two (0, 0)
    assert rloo[1, 0].item() == pytest.approx(0.0 - 0.5)  # 0 minus the mean of (1, 0)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(returns, mask, 4)


# -- compute_advantages: each estimator on hand-computed cases ---------------------------------------
from reftflow.rl.ppo.core import compute_advantages  # noqa: E402


def test_gae_advantages_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    # lambda 1, gamma 1: every token's advantage is the return (1) minus its value (0.5)
    adv, ret = compute_advantages(rewards, values, mask, "gae", gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    # lambda 0: one-step TD errors r_t + V_{t+1} - V_t, with V = 0 after the last token
    adv, _ = compute_advantages(rewards, values, mask, "gae", gamma=1.0, lam=0.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0, 0.5]]))


def test_gae_whitening_is_masked_whiten_of_the_raw_advantages():
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.1]])
    values = torch.tensor([[0.2, 0.4, 9.0], [0.1, 0.1, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    raw, _ = compute_advantages(rewards, values, mask, "gae", whiten=False)
    white, _ = compute_advantages(rewards, values, mask, "gae", whiten=True)
    torch.testing.assert_close(white, masked_whiten(raw, mask))


def test_grpo_advantages_by_hand_and_never_whitened_again():
    # K = 2: sequence rewards 1 and 0 -> mean 0.5, std sqrt(0.5) -> +-0.5 / 0.7071 on every real token
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv, ret = compute_advantages(rewards, None, mask, "group_zscore", group_size=2, whiten=True)
    a = 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([[a, a], [-a, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # reward-to-go
    same, _ = compute_advantages(rewards, None, mask, "group_zscore", group_size=2, whiten=False)
    torch.testing.assert_close(adv, same)


def test_rloo_advantages_by_hand_with_negative_scaling():
    # K = 3, returns 1, 0, 0: each minus the mean of the other two -> 1, -0.5, -0.5
    rewards = torch.tensor([[1.0], [0.0], [0.0]])
    mask = torch.ones(3, 1)
    adv, _ = compute_advantages(rewards, None, mask, "leave_one_out", group_size=3)
    torch.testing.assert_close(adv, torch.tensor([[1.0], [-0.5], [-0.5]]))
    scaled, _ = compute_advantages(rewards, None, mask, "leave_one_out", group_size=3, negative_scale=0.5)
    torch.testing.assert_close(scaled, torch.tensor([[1.0], [-0.25], [-0.25]]))


def test_compute_advantages_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="unknown advantage estimator 'vtrace'"):
        compute_advantages(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), "vtrace")
    with pytest.raises(ValueError, match="gae estimator needs values"):
        compute_advantages(torch.zeros(1, 1), None, torch.ones(1, 1), "gae")
