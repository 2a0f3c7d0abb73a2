"""The Dockerfile, read (no Docker engine here builds it): it keeps reftflow's privacy defaults, installs
the CPU torch before the package (or pip pulls a CUDA build), and copies what exists."""

from __future__ import annotations

import re
from pathlib import Path

from reftflow.env import PRIVACY_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_keeps_the_privacy_defaults_and_installs_cpu_torch_first():
    text = (ROOT / "Dockerfile").read_text()
    for key, value in PRIVACY_ENV.items():
        assert re.search(rf"\b{key}={value}\b", text), key
    assert text.index("download.pytorch.org/whl/cpu") < text.index("RUN pip install \".")
    sources = [s for line in re.findall(r"^COPY (.+)$", text, re.M) for s in line.split()[:-1]]
    assert sources and all((ROOT / s).exists() for s in sources), sources
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv/" in ignored and "mlflow.db" in ignored  # a run's stores never reach the image
