"""Rollouts: log-probs from the one-pass forward equal generate's, EOS masks, greedy batching."""

import pytest
import torch

from reftflow.config import ModelConfig
from reftflow.data.synthetic import generate
from reftflow.modeling import init_model
from reftflow.ppo import rollout
from reftflow.ppo.value_head import PolicyWithValue, response_logprobs
from reftflow.prompting import prompt_text

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


def test_sample_logprobs_match_generate_scores(tiny):
    model, tok = tiny
    prompts = [tok(prompt_text(r.question))["input_ids"] for r in generate(5, seed=0)]
    torch.manual_seed(0)
    ro = rollout.sample(model, tok, prompts, max_new_tokens=12, temperature=0.7)
    assert ro.response_ids.shape == (5, 12) and ro.prompt_ids.shape[1] % 8 == 0
    assert len(ro.texts) == 5
    # the same sampling again, asking generate for its (temperature-processed) scores
    ids, mask = rollout.left_pad(prompts, tok.pad_token_id, 8)
    torch.manual_seed(0)
    cfg = rollout._generation_config(tok, 12, True, 0.7)
    cfg.output_scores, cfg.return_dict_in_generate = True, True
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    n = len(out.scores)
    seq = out.sequences[:, ids.shape[1]:]
    assert torch.equal(seq, ro.response_ids[:, :n])
    gen_logp = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, seq.unsqueeze(-1)).squeeze(-1)
    pv = PolicyWithValue(model)
    logp, values, _ = pv(ro.input_ids(), ro.attention_mask(), 12, temperature=0.7)
    m = ro.response_mask[:, :n]
    assert ((logp[:, :n] - gen_logp).abs() * m).max().item() < 1e-4
    torch.testing.assert_close(response_logprobs(model, ro.input_ids(), ro.attention_mask(), 12, 0.7), logp.detach())
    assert torch.all(values == 0)  # zero-initialised value head


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
    prompts = [prompt_text(r.question) for r in generate(7, seed=3)]
    batched = rollout.generate_greedy(model, tok, prompts, max_new_tokens=8, batch_size=3)
    single = [rollout.generate_greedy(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert rollout.generate_greedy(model, tok, [], 8) == []
