"""Decoding: the sampler's log-probs/values equal a full forward's, EOS masks, greedy batching."""

import pytest
import torch

from reftflow.config import ModelConfig
from reftflow.data.synthetic import generate
from reftflow.modeling import init_model
from reftflow import generation as rollout
from reftflow.forward import response_logprobs
from reftflow.rl.ppo.value_head import PolicyWithValue
from reftflow.prompting import render_prompt

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model, tok = init_model(TINY, seed=0)
    return model.eval(), tok


def test_left_pad_and_response_mask():
    ids, mask = rollout.left_pad([[5, 6, 7], [9]], pad_id=0, multiple=4)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 9]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    resp = torch.tensor([[3, 1, 0, 0], [3, 4, 5, 6], [1, 1, 1, 1]])  # eos id 1
    assert rollout.response_mask(resp, eos_id=1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_sample_logprobs_and_values_match_a_full_forward(tiny):
    """The sampler's own log-probs and values are PPO's "old policy" ones: they must equal what a
    full forward of prompt + response computes (positions from the mask, left padding included)."""
    model, tok = tiny
    pv = PolicyWithValue(model, value_init_std=0.1).eval()  # a non-zero value head, so values are checked
    prompts = [tok(render_prompt(r))["input_ids"] for r in generate(5, seed=0)]
    torch.manual_seed(0)
    ro = rollout.sample(pv, tok, prompts, max_new_tokens=12, temperature=0.7)
    assert ro.response_ids.shape == ro.logprobs.shape == ro.values.shape == (5, 12)
    assert ro.prompt_ids.shape[1] % 8 == 0 and len(ro.texts) == 5
    assert len({len(p) for p in prompts}) > 1  # really left-padded
    logp, values, _ = pv(ro.input_ids(), ro.attention_mask(), 12, temperature=0.7)
    m = ro.response_mask
    assert ((logp - ro.logprobs).abs() * m).max().item() < 1e-4
    assert ((values - ro.values).abs() * m).max().item() < 1e-4
    assert values.abs().max().item() > 1e-3
    assert torch.all(ro.logprobs[m == 0] == 0) and torch.all(ro.values[m == 0] == 0)
    with torch.no_grad():
        ref = response_logprobs(model, ro.input_ids(), ro.attention_mask(), 12, 0.7)
    torch.testing.assert_close(ref, logp.detach())
    # a plain LM gives log-probs but no values; the same seed gives the same samples
    torch.manual_seed(0)
    plain = rollout.sample(model, tok, prompts, max_new_tokens=12, temperature=0.7)
    assert plain.values is None and torch.equal(plain.response_ids, ro.response_ids)


def test_sample_draws_from_the_tempered_distribution():
    """Ancestral sampling at temperature T: token frequencies follow softmax(logits / T)."""
    model, tok = init_model(TINY, seed=2)
    model.eval()
    prompt = [5, 6, 7]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    expected = torch.softmax(logits / 0.5, -1)
    torch.manual_seed(3)
    ro = rollout.sample(model, tok, [prompt] * 4000, max_new_tokens=1, temperature=0.5)
    freq = torch.bincount(ro.response_ids[:, 0], minlength=expected.numel()).float() / 4000
    assert (freq - expected).abs().max().item() < 0.03


def test_sample_stops_at_eos_and_masks_after_it():
    model, tok = init_model(TINY, seed=1)

    class EosBiased(torch.nn.Module):  # the LM head with a large bonus on EOS from the 2nd token on
        def __init__(self, head):
            super().__init__()
            self.head, self.calls = head, 0

        def forward(self, h):
            out = self.head(h)
            self.calls += 1
            if self.calls > 1:
                out[..., tok.eos_token_id] += 100.0
            return out

    model.lm_head = EosBiased(model.lm_head)
    torch.manual_seed(1)
    ro = rollout.sample(model.eval(), tok, [[5, 6, 7]] * 3, max_new_tokens=10)
    assert ro.response_ids.shape == (3, 10)
    assert ro.response_mask.sum(1).tolist() == [2.0, 2.0, 2.0]  # one sampled token, then EOS
    assert torch.all(ro.response_ids[:, 1] == tok.eos_token_id)
    assert torch.all(ro.response_ids[:, 2:] == tok.pad_token_id)
    assert all(len(t) == 1 for t in ro.texts)  # EOS is not decoded


def test_generate_greedy_keeps_order_and_is_batch_invariant(tiny):
    model, tok = tiny
    prompts = [render_prompt(r) for r in generate(7, seed=3)]
    batched = rollout.generate_greedy(model, tok, prompts, max_new_tokens=8, batch_size=3)
    single = [rollout.generate_greedy(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert rollout.generate_greedy(model, tok, [], 8) == []


def test_shared_prompt_forward_equals_the_plain_one_with_gradients():
    """group_size=K runs each prompt once and repeats its KV cache: log-probs, values and the
    gradients they send into the model must equal the plain per-row forward's."""
    torch.manual_seed(0)
    K = 3
    questions = [tok for tok in (init_model(TINY, seed=0)[1](render_prompt(r))["input_ids"]
                                 for r in generate(4, seed=5))]
    assert len({len(q) for q in questions}) > 1  # different prompt lengths: left padding in play
    results = []
    for group in (1, K):
        model, tok = init_model(TINY, seed=0)
        pv = PolicyWithValue(model, value_init_std=0.1).eval()
        torch.manual_seed(1)  # the same value-head init and the same samples in both runs
        pv.value_head.weight.data.normal_(0, 0.1)
        ro = rollout.sample(pv, tok, [q for q in questions for _ in range(K)], max_new_tokens=10, group_size=group)
        logp, values, _ = pv(ro.input_ids(), ro.attention_mask(), 10, group_size=group)
        m = ro.response_mask
        ((logp * m).sum() + (values * m).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in pv.parameters() if p.grad is not None])
        ref = response_logprobs(model, ro.input_ids(), ro.attention_mask(), 10, group_size=group)
        results.append((ro, logp.detach() * m, values.detach() * m, grads, ref * m))
    (ro1, lp1, v1, g1, ref1), (roK, lpK, vK, gK, refK) = results
    assert torch.equal(ro1.response_ids, roK.response_ids)  # shared prefill samples the same tokens
    torch.testing.assert_close(lpK, lp1, atol=1e-5, rtol=0)
    torch.testing.assert_close(vK, v1, atol=1e-5, rtol=0)
    torch.testing.assert_close(refK, ref1, atol=1e-5, rtol=0)
    torch.testing.assert_close(gK, g1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(roK.logprobs * roK.response_mask, lpK, atol=1e-4, rtol=0)


def test_group_size_needs_runs_of_identical_prompts(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="runs of 2 identical"):
        rollout.sample(model, tok, [[5, 6], [5, 7]], max_new_tokens=2, group_size=2)
