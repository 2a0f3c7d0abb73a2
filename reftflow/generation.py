"""Decoding: batched sampling with a KV cache (PPO, RAFT) and greedy completion (evaluation, the
registered model, benchmarks). The one place that turns prompts into responses.

Prompts are tokenised once (by the caller) and left-padded here to a multiple of `pad_multiple`
so that only a few distinct shapes reach the model; responses stop at EOS and come back padded to
`max_new_tokens`, with a mask that covers the tokens up to and including EOS. Texts are decoded
once, from the masked tokens.

`sample` is our own decoding loop rather than `generate`: each step already computes the hidden
state and the logits the token is drawn from, so it keeps the token's log-prob and (given a model
with a `value(hidden)` head, such as `PolicyWithValue`) the value of that state. PPO's "old
policy" forward then costs nothing — the same saving TRL's PPO loop made with `generate`'s scores
(`forward` with a KV cache computes the same function as a full pass, to float rounding;
tests/test_generation.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor
    """(bs, P) left-padded prompt tokens."""
    prompt_mask: torch.Tensor
    """(bs, P) 1 on real prompt tokens."""
    response_ids: torch.Tensor
    """(bs, R) sampled tokens, R = max_new_tokens, padded after EOS with the pad id."""
    response_mask: torch.Tensor
    """(bs, R) float, 1 on tokens up to and including the first EOS."""
    texts: list[str]
    """decoded responses (special tokens skipped)."""
    logprobs: torch.Tensor | None = None
    """(bs, R) log-prob of each sampled token under the sampling policy (at its temperature); 0 after EOS."""
    values: torch.Tensor | None = None
    """(bs, R) the value head's V of the state that emitted each token (PolicyWithValue only); 0 after EOS."""

    def trimmed(self, multiple: int = 8) -> "Rollout":
        """Drop trailing all-padding response columns, keeping R a multiple of `multiple`."""
        longest = int(self.response_mask.sum(1).max().item()) if len(self.texts) else 0
        keep = min(self.response_ids.shape[1], max(multiple, -(-longest // multiple) * multiple))
        cut = lambda t: None if t is None else t[:, :keep]  # noqa: E731
        return Rollout(self.prompt_ids, self.prompt_mask, self.response_ids[:, :keep],
                       self.response_mask[:, :keep], self.texts, cut(self.logprobs), cut(self.values))

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)


class LMHeads:
    """A plain Hugging Face causal LM seen through the sampler's interface: `backbone` and
    `logits(hidden)`; it has no value head (`value` is None)."""

    value = None

    def __init__(self, lm):
        self.lm = lm
        self.backbone = lm.base_model
        self.logits = lm.get_output_embeddings()


def decodable(model):
    """`model` itself when it has the sampler's interface (`backbone`, `logits`, `value`), else an
    `LMHeads` view of a plain causal LM."""
    return model if hasattr(model, "value") and hasattr(model, "backbone") else LMHeads(model)


def left_pad(seqs: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (n, L), L = the longest sequence rounded up to `multiple`."""
    longest = max(len(s) for s in seqs)
    length = -(-longest // multiple) * multiple
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s):] = 1
    return ids, mask


def response_mask(response_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 on tokens up to and including the first EOS (all tokens when there is none)."""
    bs, R = response_ids.shape
    if eos_id is None:
        return torch.ones(bs, R)
    is_eos = response_ids == eos_id
    # the first EOS index, or R when a row has none
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((bs,), R))
    return (torch.arange(R).unsqueeze(0) <= first.unsqueeze(1)).float()


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    lengths = mask.sum(1).long().tolist()
    rows = [row[:n] for row, n in zip(response_ids.tolist(), lengths)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def _greedy_config(tokenizer, max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


@torch.no_grad()
def sample(model, tokenizer, prompt_tokens: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           pad_multiple: int = 8, group_size: int = 1) -> Rollout:
    """One sampled response per prompt (repeat a prompt K times for K samples).

    `group_size` K: prompts come in runs of K copies (K samples per question); each prompt is
    prefilled once and its KV cache repeated K times.

    Pure ancestral sampling (top_k=0, top_p=1) at `temperature`, with the KV cache, stopping when
    every row has emitted EOS. Randomness comes from torch's global generator: seed it first.
    `model` is a plain causal LM or anything with `backbone`, `logits(hidden)` and `value(hidden)`
    (a `PolicyWithValue`; unwrap DDP first). Returns the tokens' log-probs too, and their values
    when the model has a value head.
    """
    from reftflow.forward import backbone_call, output_cache, position_ids_from_mask, shared_prefill

    heads = decodable(model)
    backbone, value_fn = heads.backbone, heads.value
    device = next(backbone.parameters()).device
    ids, mask = left_pad(prompt_tokens, tokenizer.pad_token_id, pad_multiple)
    ids, mask = ids.to(device), mask.to(device)
    bs = ids.shape[0]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    positions = position_ids_from_mask(mask)
    next_pos = positions[:, -1:] + 1
    g = max(1, group_size)
    if bs % g or any(prompt_tokens[i] != prompt_tokens[i - i % g] for i in range(bs)):
        raise ValueError(f"group_size={g}: prompts must come in runs of {g} identical copies")
    hidden, cache = shared_prefill(backbone, ids, mask, positions, g)
    done = torch.zeros(bs, dtype=torch.bool, device=device)
    tokens, logps, values = [], [], []
    for _ in range(max_new_tokens):
        logp_all = torch.log_softmax(heads.logits(hidden).float() / temperature, dim=-1)
        tok = torch.multinomial(logp_all.exp(), 1).squeeze(1)
        live = ~done
        tok = torch.where(live, tok, torch.full_like(tok, pad))
        tokens.append(tok)
        logps.append(torch.where(live, logp_all.gather(1, tok.unsqueeze(1)).squeeze(1), 0.0))
        if value_fn is not None:
            values.append(torch.where(live, value_fn(hidden), 0.0))
        if eos is not None:
            done = done | (tok == eos)
        if bool(done.all()) or len(tokens) == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = backbone_call(backbone, cache, input_ids=tok.unsqueeze(1), attention_mask=mask, position_ids=next_pos,
                            use_cache=True)
        hidden, cache = out.last_hidden_state[:, -1], output_cache(out)
        next_pos = next_pos + 1

    resp = _fixed_width(tokens, max_new_tokens, pad)
    rmask = response_mask(resp, eos)
    texts = decode(tokenizer, resp, rmask)
    return Rollout(ids.cpu(), (mask[:, :ids.shape[1]]).cpu(), resp, rmask, texts, _fixed_width(logps, max_new_tokens, 0.0),
                   _fixed_width(values, max_new_tokens, 0.0) if value_fn is not None else None)


def _fixed_width(cols: list[torch.Tensor], width: int, fill) -> torch.Tensor:
    """Per-step (bs,) columns → (bs, width) on the CPU, padded with `fill`: every step sees the same
    response width; `Rollout.trimmed` cuts it back to what was used."""
    t = torch.stack(cols, dim=1).cpu()
    if t.shape[1] < width:
        t = torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), fill, dtype=t.dtype)], dim=1)
    return t


def generate_greedy(lm, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
                    bf16: bool = False) -> list[str]:
    """Greedy completions of `prompts` (texts) by a plain causal LM, in their order; special tokens
    skipped. Prompts are batched by length (longest first) to keep left padding short. `bf16`: under bf16
    autocast (`reftflow.precision`).
    """
    return generate_texts(lm, tokenizer, prompts, _greedy_config(tokenizer, max_new_tokens), batch_size, bf16)


@torch.no_grad()
def generate_texts(lm, tokenizer, prompts: list[str], config, batch_size: int = 64, bf16: bool = False,
                   tokens: list[list[int]] | None = None) -> list[str]:
    """`generate_greedy` under any `transformers.GenerationConfig` (a judge model's sampling, say);
    `tokens`: the prompts already tokenised."""
    from reftflow.precision import autocast

    if not prompts:
        return []
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    tokens = tokens if tokens is not None else tokenizer(list(prompts))["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(tokens[i]))
    out: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([tokens[i] for i in chunk], tokenizer.pad_token_id)
        with autocast(device, bf16):
            gen = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        resp = gen[:, ids.shape[1]:].cpu()
        texts = decode(tokenizer, resp, response_mask(resp, tokenizer.eos_token_id))
        for i, text in zip(chunk, texts):
            out[i] = text
    lm.train(was_training)
    return out  # type: ignore[return-value]
