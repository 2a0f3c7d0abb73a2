"""Privacy and runtime defaults applied by every entry point (never by a library module at import).

Each privacy switch was checked to stop a real network call: MLflow only honours
DO_NOT_TRACK=true (not 1), Prefect's server heartbeat needs its own switch, DVC starts an
analytics daemon after every command, and the HF hub is never needed by the default model.

Prefect reads its settings once, when `prefect` is first imported, so these must be in the
environment before that import (the `flows` package applies them as it is imported).
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

# Not privacy: settings that keep a run from failing on a slow machine.
RUNTIME_ENV = {
    # With no PREFECT_API_URL the flow starts a temporary Prefect server and waits for it; on a
    # fresh PREFECT_HOME that includes creating and migrating its SQLite DB, which takes longer
    # than Prefect's 20 s default on a busy 2-core machine ("Timed out while attempting to
    # connect to ephemeral Prefect API server").
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # MLflow retries an unanswered HTTP call 7 times with exponential backoff (minutes) before it
    # raises; reftflow retries each call itself a bounded number of times (reftflow/tracking.py), so a
    # server that is down costs seconds and one line, not a silent hang
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def apply_defaults() -> None:
    """Set the privacy and runtime defaults unless the user set them (setdefault: the user decides)."""
    for key, value in {**PRIVACY_ENV, **RUNTIME_ENV}.items():
        os.environ.setdefault(key, value)
