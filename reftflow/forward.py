"""Scoring forwards over prompt + response: the hidden states, logits and log-probs at the
positions that predict response tokens, with the K samples of a question sharing one prompt pass.

Used by the sampler (`reftflow.generation`), PPO's policy/value and reference forwards, and RAFT's
fine-tuning loss. Every tensor is `(bs, R)` over the R response positions, as in `reftflow.tensors`.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from reftflow.tensors import logprobs_from_logits


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as `generate` does for left-padded prompts."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@functools.lru_cache(maxsize=None)
def _cache_argument(backbone_class: type) -> str:
    """transformers 5.2x renamed the `past_key_values` argument to `cache` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(backbone_class.forward).parameters else "past_key_values"


def backbone_call(backbone: nn.Module, cache, **kwargs):
    """`backbone(**kwargs)` continuing from a KV `cache`, under the argument name the model takes."""
    kwargs[_cache_argument(type(backbone))] = cache
    return backbone(**kwargs)


def output_cache(out):
    """The KV cache a backbone forward returned (`cache` in transformers 5.2x, else `past_key_values`)."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def shared_prefill(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor, group_size: int):
    """Run rows in groups of `group_size` that share one prompt once per group.

    Returns (the last position's hidden state (bs, H), KV cache), both repeated back to all bs rows, so the
    rows continue from the cache as if each had run the prompt itself (causal attention never lets
    a prompt token see what follows it).
    """
    head = slice(None, None, group_size)
    out = backbone(input_ids=input_ids[head], attention_mask=attention_mask[head], position_ids=position_ids[head],
                   use_cache=True)
    hidden, cache = out.last_hidden_state[:, -1], output_cache(out)
    if group_size > 1:
        hidden = hidden.repeat_interleave(group_size, dim=0)
        cache.batch_repeat_interleave(group_size)
    return hidden, cache


def response_hidden(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, group_size: int = 1
) -> torch.Tensor:
    """Last hidden states (bs, R, H) at the positions that predict the R response tokens.

    group_size K > 1: rows come in groups of K that share one (left-padded) prompt, as PPO's K
    samples per question do. The prompt then runs once per group (`shared_prefill`) and the
    responses continue from its repeated KV cache: the same function, with the prompt's cost,
    forward and backward, cut K-fold. Prompts are most of each sequence in ReFT-style data (a
    question, then a short answer), so this is most of an update.
    """
    backbone = lm.base_model
    positions = position_ids_from_mask(attention_mask)
    if group_size <= 1:
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        # the hidden state at position i predicts token i + 1
        return out.last_hidden_state[:, -response_length - 1 : -1]
    P = input_ids.shape[1] - response_length
    last_prompt, cache = shared_prefill(backbone, input_ids[:, :P], attention_mask[:, :P], positions[:, :P],
                                        group_size)
    last_prompt = last_prompt.unsqueeze(1)
    if response_length == 1:
        return last_prompt
    # the last response token predicts nothing inside the response: it is not fed
    out = backbone_call(backbone, cache, input_ids=input_ids[:, P:-1], attention_mask=attention_mask[:, :-1],
                        position_ids=positions[:, P:-1], use_cache=True)
    return torch.cat([last_prompt, out.last_hidden_state], dim=1)


def response_hidden_and_logits(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
    temperature: float = 1.0, group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states (bs, R, H) and logits (bs, R, V) at the positions predicting the response.

    Runs the backbone (`lm.base_model`) once (see `response_hidden` for `group_size`) and the LM
    head only on those R positions.
    """
    hidden = response_hidden(lm, input_ids, attention_mask, response_length, group_size)
    logits = lm.get_output_embeddings()(hidden)
    if temperature != 1.0:
        logits = logits / temperature
    return hidden, logits


def response_logprobs(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
    temperature: float = 1.0, group_size: int = 1,
) -> torch.Tensor:
    """(bs, R) log-probs of the response tokens under a plain causal LM (with autograd when enabled)."""
    _, logits = response_hidden_and_logits(lm, input_ids, attention_mask, response_length, temperature, group_size)
    return logprobs_from_logits(logits, input_ids[:, -response_length:])
