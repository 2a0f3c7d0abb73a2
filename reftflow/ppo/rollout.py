"""Batched sampling with a KV cache, and the greedy decoding the evaluate stage reuses.

Prompts are tokenised once (by the caller) and left-padded here to a multiple of `pad_multiple`
so that only a few distinct shapes reach the model; responses stop at EOS and come back padded to
`max_new_tokens`, with a mask that covers the tokens up to and including EOS. Texts are decoded
once, from the masked tokens.
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

    def trimmed(self, multiple: int = 8) -> "Rollout":
        """Drop trailing all-padding response columns, keeping R a multiple of `multiple`."""
        longest = int(self.response_mask.sum(1).max().item()) if len(self.texts) else 0
        keep = min(self.response_ids.shape[1], max(multiple, -(-longest // multiple) * multiple))
        return Rollout(self.prompt_ids, self.prompt_mask, self.response_ids[:, :keep],
                       self.response_mask[:, :keep], self.texts)

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)


def unwrap_lm(model):
    """The HF causal LM inside a DDP wrapper and/or a PolicyWithValue."""
    model = getattr(model, "module", model)
    return getattr(model, "policy", model)


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


def _generation_config(tokenizer, max_new_tokens: int, do_sample: bool, temperature: float = 1.0):
    from transformers import GenerationConfig

    kwargs = dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else {}
    return GenerationConfig(
        do_sample=do_sample,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        **kwargs,
    )


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_tokens: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    pad_multiple: int = 8,
) -> Rollout:
    """One sampled response per prompt (repeat a prompt K times for K samples).

    Pure ancestral sampling (top_k=0, top_p=1) at `temperature`, with the KV cache, stopping when
    every row has emitted EOS. Randomness comes from torch's global generator: seed it first.
    """
    lm = unwrap_lm(model)
    device = next(lm.parameters()).device
    ids, mask = left_pad(prompt_tokens, tokenizer.pad_token_id, pad_multiple)
    ids, mask = ids.to(device), mask.to(device)
    out = lm.generate(input_ids=ids, attention_mask=mask,
                      generation_config=_generation_config(tokenizer, max_new_tokens, True, temperature))
    resp = out[:, ids.shape[1]:].cpu()
    if resp.shape[1] < max_new_tokens:  # fixed width: every step sees the same response shape
        fill = torch.full((resp.shape[0], max_new_tokens - resp.shape[1]), tokenizer.pad_token_id, dtype=resp.dtype)
        resp = torch.cat([resp, fill], dim=1)
    rmask = response_mask(resp, tokenizer.eos_token_id)
    resp = torch.where(rmask.bool(), resp, torch.full_like(resp, tokenizer.pad_token_id))
    texts = decode(tokenizer, resp, rmask)
    return Rollout(ids.cpu(), mask.cpu(), resp, rmask, texts)


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy completions of `prompts` (texts), in their order; special tokens skipped.

    Prompts are batched by length (longest first) to keep left padding short.
    """
    if not prompts:
        return []
    lm = unwrap_lm(model)
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    tokens = tokenizer(list(prompts))["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(tokens[i]))
    config = _generation_config(tokenizer, max_new_tokens, do_sample=False)
    out: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([tokens[i] for i in chunk], tokenizer.pad_token_id)
        gen = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        resp = gen[:, ids.shape[1]:].cpu()
        texts = decode(tokenizer, resp, response_mask(resp, tokenizer.eos_token_id))
        for i, text in zip(chunk, texts):
            out[i] = text
    lm.train(was_training)
    return out  # type: ignore[return-value]
