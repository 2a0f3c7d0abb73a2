"""Sharded training where `model.fsdp` asks for it: FSDP2 (torch's `fully_shard`) through accelerate's
FullyShardedDataParallelPlugin, for our PPO's Accelerator and TRL's Trainers alike.

Each process keeps 1/N of the weights, gradients and AdamW state; a layer's weights are all-gathered
for its forward and backward and resharded after (torch docs, "FSDP2": pytorch.org/docs/stable/
distributed.fsdp.fully_shard.html). Three things need the whole model at once, each on every process
(they are collectives): sampling (`full_parameters`), the final save and a checkpoint (`full_state`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

PLUGIN_ARGS: dict[str, Any] = {"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}
"""what every sharded stage asks of accelerate: FSDP2; a saved model is one whole state dict (a normal HF
directory, as DDP's), not a shard per process; a layer's weights are freed after its forward."""


def trl_args(fsdp: bool, checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments for TRL's SFTTrainer and GRPOTrainer: DDP, or with `fsdp` the same plugin, which
    transformers builds from `fsdp` and `fsdp_config` (transformers docs "FSDP"); each decoder layer is one
    unit (accelerate wraps the model's `_no_split_modules`). `checkpointing` (`model.gradient_checkpointing`)
    is FSDP's own there: the Trainer's would all-gather each layer once more in the backward
    (transformers/training_args.py, huggingface/transformers#30404)."""
    if not fsdp:
        return {"activation_checkpointing": checkpointing}
    # transformers 5.24 names the plugin's fsdp_version `version` (training_args.py strips `fsdp_`)
    config = {("version" if k == "fsdp_version" else k): v for k, v in PLUGIN_ARGS.items()}
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": {**config, "activation_checkpointing": checkpointing},
            "activation_checkpointing": False}


def accelerator(cpu: bool, fsdp: bool):
    """An Accelerator for our PPO: DDP, or FSDP2 with `fsdp` (on one process it shards nothing).

    On a CPU accelerate 1.16 drops the plugin and falls back to DDP without a word: it makes a plugin
    FSDP only in its branch for accelerators (accelerate/state.py, AcceleratorState.__init__, the
    `MULTI_GPU, MULTI_MLU, ...` case; MULTI_CPU is not in it), while torch 2.13's FSDP2 runs on gloo. So on
    the CPU the state is set as that branch would set it, and the same accelerate code shards our model on
    a CPU as on GPUs (tests/test_fsdp.py). TRL's Trainers build their own Accelerator: they stay DDP on a CPU."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(**PLUGIN_ARGS) if fsdp else None
    acc = Accelerator(cpu=cpu, fsdp_plugin=plugin)
    if plugin is not None and acc.distributed_type == DistributedType.MULTI_CPU:
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        # and in the process-wide state every later AcceleratorState() copies from (as that branch ends)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def is_sharded(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _units(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_parameters(model) -> Iterator[None]:
    """Every FSDP unit of `model` all-gathered once and kept whole until the block ends (every process
    enters it). Inside, its submodules can be called directly (our sampler calls the backbone and the
    heads, not the model's forward) and no forward all-gathers again: processes that decode different
    numbers of tokens would otherwise wait on each other's collectives forever. The cost is the whole
    model in memory while sampling, as verl's and TRL's FSDP rollouts pay (docs/scale.md). Nothing to do
    for a model that is not sharded."""
    units = _units(model)
    if not units:
        yield
        return
    # FSDP2 takes the first unit that runs forward for the root (torch/distributed/fsdp/_fully_shard/
    # _fsdp_state.py `_lazy_init`: "requires running forward through the root module first"); our sampler
    # and reference call the backbone, never the root, so the root is initialised as such here
    model._get_fsdp_state()._lazy_init()
    inner = [u for u in units if u is not model]  # the root is never called inside: its own setting stays
    for u in units:
        u.unshard()
    for u in inner:
        u.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for u in inner:
            u.set_reshard_after_forward(True, recurse=False)
        for u in units:
            u.reshard()


def drop_tied(model, state: dict) -> dict:
    """`state` without the second name of a tied weight (e.g. `lm_head.weight`, tied to the input
    embeddings): save_pretrained drops it by shared storage, which a gathered state dict no longer has, so
    a sharded run saves the same files as a replicated one."""
    seen: set[int] = set()
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return {k: v for k, v in state.items() if k not in tied}


def full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict or None) whole, on the CPU of rank 0 (empty elsewhere):
    what a save writes. A collective: every process calls it. The optimizer's is keyed by parameter name
    (torch.distributed.checkpoint.state_dict), loaded back by `load_optimizer_state`."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else None
    return state, optim


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Rank 0's whole optimizer state (`full_state`) into every process's shard of it (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
