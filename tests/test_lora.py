"""LoRA (reftflow/lora.py): the reference is the base with its adapters disabled, the merged model computes
what the adapted one does, and PPO resumes from an adapter checkpoint as if never stopped. (Every RL
algorithm training adapters through the protocol: tests/test_rl_protocol.py.)"""

from __future__ import annotations

import torch

from reftflow.config import LoRAConfig
from reftflow.data.synthetic import generate
from reftflow.forward import response_logprobs
from reftflow.lora import adapters_disabled, add_adapters, inner, merged, trainable_parameters
from reftflow.modeling import load_model
from reftflow.rl import RLRun, build_algorithm
from tests.helpers import TINY, FunctionGrader, make_policy, rl_config

LORA = LoRAConfig(r=4, alpha=8)
HAS_DIGIT = FunctionGrader(lambda texts, items: [float(any(c.isdigit() for c in t)) for t in texts], "has_digit")


def _batch(tok, n=4, response=6):
    ids = torch.randint(3, len(tok), (n, 10 + response), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones_like(ids), response


def _adapted(policy):
    """The policy with adapters whose B is random (peft starts B at zero: a no-op that proves nothing)."""
    base, tok = load_model(policy)
    peft = add_adapters(base, LORA)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(hash(name) % 1000))
    return peft, tok


def test_the_reference_is_the_base_with_adapters_disabled(tmp_path):
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    peft, tok = _adapted(policy)
    fresh, _ = load_model(policy)
    ids, mask, R = _batch(tok)
    with torch.no_grad():
        with adapters_disabled(peft):
            disabled = response_logprobs(inner(peft), ids, mask, R)
        reference = response_logprobs(fresh, ids, mask, R)
        adapted = response_logprobs(inner(peft), ids, mask, R)
    assert torch.equal(disabled, reference)
    assert not torch.allclose(adapted, reference, atol=1e-3)  # the adapters do change the policy
    assert trainable_parameters(peft) < sum(p.numel() for p in fresh.parameters()) / 5


def test_the_merged_model_computes_what_the_adapted_one_does(tmp_path):
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    peft, tok = _adapted(policy)
    ids, mask, R = _batch(tok)
    with torch.no_grad():
        adapted = response_logprobs(inner(peft), ids, mask, R)
        plain = merged(peft)  # a copy: the peft model is unchanged
        assert not any("lora" in k for k in plain.state_dict())
        assert torch.allclose(response_logprobs(plain, ids, mask, R), adapted, atol=1e-5)
        assert torch.equal(response_logprobs(inner(peft), ids, mask, R), adapted)
    plain.save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")
    reloaded, _ = load_model(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(response_logprobs(reloaded, ids, mask, R), adapted, atol=1e-5)


def test_ppo_with_lora_resumes_from_an_adapter_checkpoint_as_if_never_stopped(tmp_path):
    torch.set_num_threads(1)
    policy = make_policy(tmp_path / "sft")
    cfg = rl_config("ppo", steps=3, questions_per_step=4, samples_per_question=2, max_new_tokens=8, checkpoint_every=1,
                    minibatch_size=4, lr=1e-2)
    records, model_cfg = generate(16, seed=1), TINY.model_copy(update={"lora": LORA, "torch_threads": 1})

    def run(out, ckpt, stop_after=None):
        algo = build_algorithm(RLRun(policy, records, cfg, HAS_DIGIT, out, 0, model_cfg, ckpt))
        history = []
        for m in algo.train():
            history.append(m)
            if stop_after and len(history) == stop_after:
                algo.save_checkpoint()
                return history
        algo.save()
        return history

    full = run(tmp_path / "full", tmp_path / "ck-full")
    run(tmp_path / "cut", tmp_path / "ck-cut", stop_after=2)
    checkpoint = sorted((tmp_path / "ck-cut").glob("step-*"))[-1]
    assert (checkpoint / "adapter_config.json").exists()  # adapters only, not a second full model
    resumed = run(tmp_path / "cut", tmp_path / "ck-cut")
    assert [m["step"] for m in resumed] == [3]
    assert resumed[0]["train_reward_mean"] == full[-1]["train_reward_mean"]
    a, b = (load_model(tmp_path / d)[0].state_dict() for d in ("full", "cut"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
