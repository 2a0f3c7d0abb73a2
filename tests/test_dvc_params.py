"""DVC reruns exactly what a change touches: the repo's dvc.yaml, run by DVC itself, on stand-in stages.

Each stage's command is replaced by a stand-in that writes, into every output the stage declares, a
digest of exactly what dvc.yaml says it reads (its deps and its params keys). DVC then decides what
is stale from the real dvc.yaml, in seconds: changing a params key makes stale only the stages that
list it, and their downstream stages once their outputs change; editing a module makes stale the
stages that import it (reftflow.codedeps) and those downstream. Which keys a stage lists is
reftflow/project.py's STAGES table: what its code reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reftflow.codedeps import stage_files
from reftflow.config import load_params
from reftflow.project import STAGES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = load_params(ROOT / "params.yaml").rl.algorithm
pytestmark = pytest.mark.slow  # about 30 `dvc` commands: ~50 s here

STAND_IN = '''\
import hashlib, json, re, sys
from pathlib import Path
import yaml

stage = sys.argv[1]
spec = yaml.safe_load(open("dvc.yaml"))["stages"][stage]
params = yaml.safe_load(open("params.yaml"))
h = hashlib.md5()
for dep in spec["deps"]:
    path = Path(dep)
    for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(f.read_bytes())
def lookup(key):
    node = params
    for part in key.split("."):
        node = node[part]
    return node
for key in spec["params"]:  # DVC's templating: rl.${rl.algorithm} is the chosen algorithm's section
    key = re.sub(r"\$\{([\w.]+)\}", lambda m: str(lookup(m.group(1))), key)
    h.update(json.dumps([key, lookup(key)]).encode())
for kind in ("outs", "metrics", "plots"):
    for out in spec.get(kind, []):
        path = Path(out if isinstance(out, str) else next(iter(out)))
        if not path.suffix:  # a model directory
            path.mkdir(parents=True, exist_ok=True)
            path = path / "weights"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "digest": h.hexdigest()}))
'''


def _outs(spec: dict) -> list[str]:
    return [o if isinstance(o, str) else next(iter(o)) for k in ("outs", "metrics", "plots") for o in spec.get(k, [])]


def downstream(stages: set[str]) -> set[str]:
    """`stages` and every stage that depends, through files, on their outputs."""
    out = set(stages)
    while True:
        produced = {o for s in out for o in _outs(STAGES[s])}
        more = {s for s, spec in STAGES.items() if s not in out and produced & set(spec["deps"])}
        if not more:
            return out
        out |= more


class Project:
    def __init__(self, path: Path):
        self.path = path

    def dvc(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.path, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def stale(self) -> set[str]:
        """The stages `dvc status` reports changed (their own deps or params, not yet their inputs' inputs)."""
        text = self.dvc("status")
        return {line.split(":")[0].strip() for line in text.splitlines()
                if line and not line.startswith(("\t", " ")) and line.rstrip().endswith(":")}

    def repro(self) -> set[str]:
        """Bring everything up to date; the stages DVC ran."""
        text = self.dvc("repro")
        return {line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage")}

    def set_param(self, key: str, value) -> None:
        params = yaml.safe_load((self.path / "params.yaml").read_text())
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    path = tmp_path_factory.mktemp("dvc-params")
    for pkg in ("reftflow", "tasks"):
        shutil.copytree(ROOT / pkg, path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    (path / "stand_in.py").write_text(STAND_IN)
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, spec in dvc_yaml["stages"].items():
        spec["cmd"] = f"{sys.executable} stand_in.py {name}"
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    p = Project(path)
    p.dvc("init", "--no-scm", "-q")
    assert p.repro() == set(STAGES)
    assert p.stale() == set()
    return p


@pytest.mark.parametrize("key, value, reads", [
    ("gate.min_pass_rate", 0.5, {"gate"}),
    ("evaluate.batch_size", 7, {"evaluate"}),          # gate reads evaluate.max_new_tokens, not this
    ("evaluate.max_new_tokens", 9, {"evaluate", "gate"}),
    ("model.hidden_size", 64, {"sft"}),                 # rl loads models/sft: its shape is sft's business
    ("model.name_or_path", "some/model", {"base", "sft"}),
    ("model.torch_threads", 1, {"sft", "rl", "evaluate"}),
    ("model.bf16", False, {"sft", "rl", "evaluate"}),
    ("rl.steps", 7, {"rl"}),                            # a key every algorithm reads
    ("rl.raft.lr", 1.0e-4, {"rl"} if SHIPPED == "raft" else set()),  # the chosen algorithm's own: rl; another's: none
    ("rl.ppo.lr", 1.0e-4, {"rl"} if SHIPPED == "ppo" else set()),
    ("rl.grpo.beta", 0.1, {"rl"} if SHIPPED == "grpo" else set()),
    ("data.chat", True, {"prepare", "gate"}),
    ("data.num_train", 10, {"prepare"}),
    ("seed", 3, {"prepare", "sft", "rl", "evaluate"}),  # evaluate: the seed of its sampled answers
])
def test_a_params_key_makes_stale_the_stages_that_read_it_then_their_downstream(project, key, value, reads):
    project.set_param(key, value)
    assert project.stale() == reads
    assert project.repro() == downstream(reads)
    assert project.stale() == set()


def test_a_key_no_stage_reads_reruns_nothing(project):
    """(`ppo.log_every` was one: nothing read it, it is gone; the typed config now refuses it.)"""
    params = yaml.safe_load((project.path / "params.yaml").read_text())
    assert "log_every" not in params["rl"]
    params["notes"] = "a key no stage lists"
    (project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert project.stale() == set()
    assert project.repro() == set()


@pytest.mark.parametrize("module", ["reftflow/gate.py", "reftflow/evaluation.py", "reftflow/rl/raft.py",
                                    "reftflow/sft.py", "reftflow/data/synthetic.py", "reftflow/tracking.py",
                                    "reftflow/base_model.py"])
def test_editing_a_module_makes_stale_the_stages_that_import_it_then_their_downstream(project, module):
    importers = {s for s in STAGES if Path(module) in stage_files(s, project.path)}
    assert importers, f"no stage imports {module}"
    with open(project.path / module, "a") as f:
        f.write("\n# an edit\n")
    assert project.stale() == importers
    assert project.repro() == downstream(importers)


def test_switching_the_algorithm_reruns_rl_and_then_tracks_the_new_algorithm_s_keys(project):
    """`rl.${rl.algorithm}` in dvc.yaml: DVC resolves it from params.yaml, so after a switch the new
    algorithm's section is what rl depends on."""
    other = next(a for a in ("ppo", "raft", "grpo") if a != SHIPPED)
    project.set_param("rl.algorithm", other)
    assert project.stale() == {"rl"}
    project.repro()
    project.set_param(f"rl.{other}.lr", 2.0e-5)
    assert project.stale() == {"rl"}
    project.repro()
    project.set_param(f"rl.{SHIPPED}.lr", 2.0e-5)  # the previous algorithm's keys no longer matter
    assert project.stale() == set()
    project.set_param("rl.algorithm", SHIPPED)
    project.repro()


def test_gate_depends_on_the_model_it_registers_and_the_code_that_registers_it():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["gate"]["deps"]
    assert "models/rl" in deps and "reftflow/registry.py" in deps
