"""Policy + scalar value head on one shared backbone: one forward gives token log-probs and values.

The policy stays a normal Hugging Face causal LM (saved with `save_pretrained`, loadable by
`AutoModelForCausalLM.from_pretrained`); the value head is a `Linear(hidden, 1)` saved beside it
as `value_head.safetensors`.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
from torch import nn

from reftflow.ppo.core import entropy_from_logits, logprobs_from_logits

VALUE_HEAD_FILE = "value_head.safetensors"


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
    """Last hidden states (bs, R) at the positions that predict the R response tokens.

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


@torch.no_grad()
def response_logprobs(
    lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
    temperature: float = 1.0, group_size: int = 1,
) -> torch.Tensor:
    """(bs, R) log-probs of the response tokens under a plain causal LM (the frozen reference)."""
    _, logits = response_hidden_and_logits(lm, input_ids, attention_mask, response_length, temperature, group_size)
    return logprobs_from_logits(logits, input_ids[:, -response_length:])


class PolicyWithValue(nn.Module):
    """A causal LM plus a value head reading the LM's last hidden state.

    `forward` runs the backbone once over prompt + response and applies the LM head and the value
    head only to the positions that predict response tokens, so policy log-probs and values cost
    one pass (the ReFT/TRL "shared backbone" critic).
    """

    def __init__(self, policy: nn.Module, value_init_std: float = 0.0):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            # zero init: V = 0 at the start, so the first advantages are the (whitened) returns;
            # a small random init only adds noise to them (see the report for the measurement)
            if value_init_std > 0:
                self.value_head.weight.normal_(0.0, value_init_std)
            else:
                self.value_head.weight.zero_()
            self.value_head.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
        entropy_grad: bool = True,
        group_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-probs and values for the last `response_length` tokens of `input_ids`.

        Args:
            input_ids: (bs, P + R) left-padded prompt followed by the (right-padded) response.
            attention_mask: (bs, P + R) 1 on real prompt and response tokens.
            response_length: R.
            temperature: the sampling temperature; logits are divided by it so log-probs are those
                of the distribution the rollout sampled from.
            with_entropy: also return the per-token entropy (bs, R).
            entropy_grad: False computes the entropy outside autograd (a metric, not a loss term).
            group_size: rows come in groups of this many sharing one prompt (see `response_hidden`).

        Returns:
            (logp (bs, R), values (bs, R), entropy (bs, R) or None). values[:, t] is V of the state
            that emits response token t.
        """
        hidden, logits = response_hidden_and_logits(
            self.policy, input_ids, attention_mask, response_length, temperature, group_size
        )
        logp = logprobs_from_logits(logits, input_ids[:, -response_length:])
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        entropy = None
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
        return logp, values, entropy

    # -- save / load ------------------------------------------------------------------------
    def save(self, path: str | Path, tokenizer=None) -> None:
        """A normal HF model dir (+ tokenizer) with `value_head.safetensors` beside it."""
        from safetensors.torch import save_file

        from transformers.utils import logging as hf_logging

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint is noise
        try:
            self.policy.save_pretrained(str(path))
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        state = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(path / VALUE_HEAD_FILE))

    def load_value_head(self, path: str | Path) -> bool:
        """Load `value_head.safetensors` from `path` if present; True when it was."""
        from safetensors.torch import load_file

        file = Path(path) / VALUE_HEAD_FILE
        if not file.exists():
            return False
        self.value_head.load_state_dict(load_file(str(file)))
        return True

    @classmethod
    def from_pretrained(cls, path: str | Path, value_init_std: float = 0.0):
        """(PolicyWithValue, tokenizer) from a HF dir; the value head too when saved there."""
        from reftflow.modeling import load_model

        model, tokenizer = load_model(path)
        wrapped = cls(model, value_init_std=value_init_std)
        wrapped.load_value_head(path)
        return wrapped, tokenizer
