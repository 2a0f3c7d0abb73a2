"""dvc.yaml's deps cannot drift from the code: each stage lists every project module it imports.

`reftflow.codedeps` derives a stage's files from its entry point (imports at any depth, registry
strings, transitively); `reftflow.project.dvc_yaml("files")` renders dvc.yaml from them and the stage
table, and the repo's dvc.yaml must be exactly that. A project made by `reftflow init` depends on the
digest of the same files instead, so editing one module makes exactly the stages that import it stale.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reftflow.codedeps import stage_digest, stage_files
from reftflow.project import STAGES, dvc_yaml

ROOT = Path(__file__).resolve().parents[1]
REPO_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(d) or Path(d) in file.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_imported_module(stage):
    missing = [str(f) for f in stage_files(stage, ROOT) if not covered(f, REPO_STAGES[stage]["deps"])]
    assert not missing, f"dvc.yaml stage '{stage}' does not list {missing}"


def test_the_repo_dvc_yaml_is_the_rendered_one():
    """Regenerate it with: python -c 'from reftflow.project import dvc_yaml; open("dvc.yaml", "w").write(dvc_yaml("files"))'"""
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml("files", ROOT)


def test_the_derivation_sees_function_level_imports_and_registries():
    """The analysis itself: rl reaches the trainers only through the registry's strings and lazy imports."""
    files = {str(f) for f in stage_files("rl", ROOT)}
    assert {"reftflow/rl/ppo/trainer.py", "reftflow/rl/grpo.py", "reftflow/rl/raft.py", "reftflow/generation.py"} <= files
    assert "reftflow/gate.py" not in files and "reftflow/registry.py" not in files


@pytest.mark.parametrize("stage", ["prepare", "sft"])
def test_prepare_and_sft_do_not_depend_on_rl_math_or_the_registry(stage):
    files = {str(f) for f in stage_files(stage, ROOT)}
    assert not [f for f in files if f.startswith("reftflow/rl/")], files
    assert "reftflow/registry.py" not in files and "reftflow/serving.py" not in files


def test_editing_a_module_changes_exactly_the_digests_of_the_stages_that_import_it(tmp_path):
    import shutil

    for pkg in ("reftflow", "tasks"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: stage_digest(s, tmp_path) for s in STAGES}
    with open(tmp_path / "reftflow" / "rl" / "raft.py", "a") as f:
        f.write("\n# an edit\n")
    after = {s: stage_digest(s, tmp_path) for s in STAGES}
    assert [s for s in STAGES if before[s] != after[s]] == ["rl"]
    with open(tmp_path / "reftflow" / "config.py", "a") as f:
        f.write("\n# an edit\n")
    assert all(stage_digest(s, tmp_path) != after[s] for s in STAGES)  # every stage reads its config
