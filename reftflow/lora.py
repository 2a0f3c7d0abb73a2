"""LoRA adapters (peft) for SFT and RL: `model.lora: {r, alpha, dropout, target_modules}`.

Low-rank adapters (Hu et al., 2021, "LoRA") train `r * (d_in + d_out)` numbers per adapted matrix
instead of `d_in * d_out`, so the optimizer state, the dominant memory cost of full fine-tuning with
Adam, shrinks with them. In RL the frozen base weights are also the reference policy: the KL term's
reference log-probs come from the same module with its adapters disabled (`peft`'s
`disable_adapter()`), so no second copy of the weights is held (what TRL's PPO did with peft).

What leaves a stage is always a merged, plain Hugging Face model (`merged`): the next stage, the
evaluation and the registered champion never need peft.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from reftflow.config import LoRAConfig


def peft_config(cfg: LoRAConfig):
    """`model.lora` as peft's LoraConfig for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      bias="none", task_type="CAUSAL_LM")


def add_adapters(model, cfg: LoRAConfig, adapter_dir: str | Path | None = None, seed: int = 0):
    """The peft model around `model`: new adapters, or trainable ones loaded from `adapter_dir` (a checkpoint).

    New adapters draw their A matrices from `seed` (B starts at zero), in a forked RNG: the same run
    starts from the same adapters in any process, and the caller's random stream is left as it was."""
    import torch
    from peft import PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_config(cfg))


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def inner(model):
    """The causal LM a peft model wraps, adapters injected in place (forwarding it uses them);
    a plain model is returned as is."""
    return model.get_base_model() if is_peft(model) else model


def adapters_disabled(model):
    """A context in which `model` computes the base (reference) policy: adapters off for a peft model,
    nothing to do for a plain one."""
    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def merged(model, in_place: bool = False):
    """A plain model with the adapters folded into its weights (W + B A * alpha / r). By default they are
    merged into a copy and the peft model trains on unchanged; `in_place` (the final save) spares the copy's
    memory and leaves the peft model unusable."""
    import copy

    if not is_peft(model):
        return model
    return (model if in_place else copy.deepcopy(model)).merge_and_unload()


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_for_training(policy_path: str | Path, cfg: LoRAConfig | None, resume_from: str | Path | None = None,
                      seed: int = 0):
    """(lm, peft model or None, tokenizer): the causal LM an RL algorithm trains.

    Full fine-tuning loads the checkpoint being resumed, else the policy. LoRA always loads the policy
    (it is the reference too) and adds adapters: new ones, or the checkpoint's. `lm` is what forwards
    run through either way (for LoRA, the wrapped model with the adapters injected in place).
    """
    from reftflow.modeling import load_model

    if cfg is None:
        lm, tokenizer = load_model(resume_from or policy_path)
        return lm, None, tokenizer
    base, tokenizer = load_model(policy_path)
    peft = add_adapters(base, cfg, adapter_dir=resume_from, seed=seed)
    return inner(peft), peft, tokenizer


def save_weights(path: str | Path, lm, peft, tokenizer, final: bool, state_dict: dict | None = None) -> None:
    """A checkpoint keeps the adapters alone (resumed on top of the same base); the final save writes
    the merged, plain model. `state_dict`: the plain model's whole state, written instead of `lm`'s own
    (a sharded model's: reftflow/fsdp.py; never with LoRA, config.py refuses the pair)."""
    if peft is not None and not final:
        peft.save_pretrained(str(path))
    else:
        (merged(peft, in_place=True) if peft is not None else lm).save_pretrained(str(path), state_dict=state_dict)
    tokenizer.save_pretrained(str(path))
