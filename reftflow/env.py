"""Privacy and runtime defaults applied by every entry point (never at import time).

Each switch was checked to stop a real network call (shared/REFERENCE.md §10): MLflow only
honours DO_NOT_TRACK=true (not 1), Prefect's server heartbeat needs its own switch, DVC starts
an analytics daemon after every command, and the HF hub is never needed by the default model.
"""

from __future__ import annotations

import os

PRIVACY_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_defaults() -> None:
    """Set the privacy switches unless the user set them (setdefault: the user can opt back in)."""
    for key, value in PRIVACY_ENV.items():
        os.environ.setdefault(key, value)
