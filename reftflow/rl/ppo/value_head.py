"""Policy + scalar value head on one shared backbone: one forward gives token log-probs and values.

The policy stays a normal Hugging Face causal LM (saved with `save_pretrained`, loadable by
`AutoModelForCausalLM.from_pretrained`); the value head is a `Linear(hidden, 1)` saved beside it
as `value_head.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from reftflow.forward import response_hidden
from reftflow.tensors import entropy_from_logits, logprobs_from_logits

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyWithValue(nn.Module):
    """A causal LM plus a value head reading the LM's last hidden state.

    `forward` runs the backbone once over prompt + response and applies the LM head and the value
    head only to the positions that predict response tokens, so policy log-probs and values cost
    one pass (the ReFT/TRL "shared backbone" critic). The sampler (`reftflow.generation`) decodes
    through the same three pieces: `backbone`, `logits(hidden)` and `value(hidden)`.
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

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The LM's decoder layer classes: accelerate's FSDP auto-wrap reads this attribute of the model it
        prepares and makes each such layer one shard unit (accelerate/utils/dataclasses.py
        `set_auto_wrap_policy`)."""
        return getattr(self.policy, "_no_split_modules", None)

    @property
    def backbone(self) -> nn.Module:
        """The transformer without its LM head: hidden states in, hidden states out."""
        return self.policy.base_model

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states → (..., V) next-token logits (the LM head)."""
        return self.policy.get_output_embeddings()(hidden)

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) hidden states → (...) V of each state, in float32."""
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        temperature: float = 1.0,
        with_entropy: bool = False,
        entropy_grad: bool = True,
        group_size: int = 1,
        detach_value: bool = False,
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
            detach_value: the value head reads detached hidden states (no value gradient into the backbone).

        Returns:
            (logp (bs, R), values (bs, R), entropy (bs, R) or None). values[:, t] is V of the state
            that emits response token t.
        """
        hidden = response_hidden(self.policy, input_ids, attention_mask, response_length, group_size)
        logits = self.logits(hidden)
        if temperature != 1.0:
            logits = logits / temperature
        logp = logprobs_from_logits(logits, input_ids[:, -response_length:])
        values = self.value(hidden.detach() if detach_value else hidden)
        entropy = None
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy = entropy_from_logits(logits if entropy_grad else logits.detach())
        return logp, values, entropy

    # -- save / load ------------------------------------------------------------------------
    def save(self, path: str | Path, tokenizer, peft=None, final: bool = True, state_dict: dict | None = None) -> None:
        """A normal HF model dir + tokenizer with `value_head.safetensors` beside it. With LoRA (`peft`, the
        peft model around `policy`), a checkpoint (`final` False) holds the adapters only; the final save
        merges them into a plain model (reftflow/lora.py). `state_dict`: this module's whole state to write
        instead of its own (under FSDP each process holds a shard: reftflow/fsdp.py `full_state`)."""
        from safetensors.torch import save_file

        from transformers.utils import logging as hf_logging

        from reftflow.lora import save_weights

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint is noise
        policy_state = None
        if state_dict is not None:
            from reftflow.fsdp import drop_tied

            policy_state = drop_tied(self.policy, {k.removeprefix("policy."): v for k, v in state_dict.items()
                                                   if k.startswith("policy.")})
        try:
            save_weights(path, self.policy, peft, tokenizer, final, state_dict=policy_state)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        head = self.value_head.state_dict() if state_dict is None else {
            k.removeprefix("value_head."): v for k, v in state_dict.items() if k.startswith("value_head.")}
        state = {k: v.detach().contiguous().cpu() for k, v in head.items()}
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
        wrapped, _, tokenizer = cls.for_training(path, value_init_std)
        return wrapped, tokenizer

    @classmethod
    def for_training(cls, path: str | Path, value_init_std: float = 0.0, lora=None, resume_from=None, seed: int = 0):
        """(PolicyWithValue, peft model or None, tokenizer) from a HF dir, or resumed from a checkpoint; the
        value head too when saved there. `lora` (`model.lora`) adds adapters to the model at `path`."""
        from reftflow.lora import load_for_training

        model, peft, tokenizer = load_for_training(path, lora, resume_from, seed)
        wrapped = cls(model, value_init_std=value_init_std)
        wrapped.load_value_head(resume_from or path)
        return wrapped, peft, tokenizer
