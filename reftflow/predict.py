"""`reftflow predict [--model champion] "question"`: an answer from the model registry.

Loads the registered reftflow pyfunc (reftflow.serving) from the project's MLflow store, the same
model `mlflow models serve -m models:/<name>@champion` serves, and prints its answer. The question
becomes the item {"question": ...}, rendered by the model's own `data.prompt_template` as in
training; `--json` takes any item or chat request instead.

    reftflow predict "Ann has 3 pens. She gets 2 more. How many pens now?"
    reftflow predict --model 2 --json '{"messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reftflow.errors import InputError
from reftflow.exits import one_line_errors


def model_uri(name: str, model: str) -> str:
    """`--model`: an alias (champion), a version number, or a full models:/ or runs:/ URI."""
    if model.startswith(("models:/", "runs:/")):
        return model
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def registered_name(project_dir: str | Path) -> str:
    """`gate.registered_model_name` of the project's params.yaml."""
    from reftflow.config import load_params

    params_file = Path(project_dir) / "params.yaml"
    if not params_file.exists():
        raise InputError(f"{Path(project_dir).resolve()}: not a reftflow project (no params.yaml; pass --project-dir)")
    return load_params(params_file).gate.registered_model_name


def predict(request, uri: str, project_dir: str | Path = ".") -> list[str]:
    import mlflow

    from reftflow.templates import MissingField
    from reftflow.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(project_dir))
    quiet_loading()
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as e:  # noqa: BLE001 - MLflow's errors for a missing model, version or alias
        raise InputError(f"{uri}: no such model in {mlflow.get_tracking_uri()} (the gate registers one when it "
                         f"passes; {str(e).splitlines()[0][:160]})") from None
    try:
        return model.predict(request)
    except (InputError, MissingField) as e:  # the item lacks a field the model's prompt template reads
        raise InputError(f"{e} (pass the whole item with --json)") from None


def quiet_loading() -> None:
    """The answer is the output: no weight-loading or artifact-download progress bars around it."""
    import os

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read at each download


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="answer a question with a registered model (default: the champion)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question", metavar="QUESTION", help="the question (with --json: an item or chat request, as JSON)")
    p.add_argument("--model", default="champion", help="an alias, a version number or a models:/ URI "
                                                       "(default: %(default)s)")
    p.add_argument("--name", help="the registered model's name (default: the project's gate.registered_model_name)")
    p.add_argument("--json", action="store_true", help="QUESTION is a JSON item or {\"messages\": [...]}")
    p.add_argument("--project-dir", default=".", help="the project whose MLflow store holds the registry "
                                                      "(default: .)")
    p.set_defaults(func=_run)
    return p


@one_line_errors("predict")
def _run(args: argparse.Namespace) -> int:
    if args.json:
        try:
            request = json.loads(args.question)
        except ValueError as e:
            raise InputError(f"--json: QUESTION is not JSON ({e})") from None
    else:
        request = {"question": args.question}
    name = args.name or registered_name(args.project_dir)
    answers = predict(request, model_uri(name, args.model), args.project_dir)
    for answer in answers:
        print(answer.strip())
    return 0
