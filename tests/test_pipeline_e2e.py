"""End to end: the Prefect flow over a real DVC repo, a real MLflow SQLite store and Prefect's
test server, on a tiny config with the shipped `rl.algorithm`. Then: nothing changed → nothing trains;
a key of another RL algorithm → nothing runs; a key of the chosen one → rl runs again (and evaluate, when
its model or curve changed), and the gate."""

from __future__ import annotations

import json

import pytest
import yaml

from reftflow.config import load_params
from tests.helpers import TINY_PARAMS, make_project, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

STAGES = ["prepare", "base", "sft", "rl", "evaluate", "gate"]
TRACKED = [s for s in STAGES if s != "base"]  # base only writes models/base; sft records its identity


def _children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def _last_parent(client):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.kind` = 'pipeline'", order_by=["start_time DESC"])
    return runs[0], len(runs)


def test_pipeline_end_to_end(tmp_path, monkeypatch, prefect_server):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    project = make_project(tmp_path / "proj", TINY_PARAMS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)

    # 1. the first run runs every stage
    summary = pipeline(project_dir=str(project), run_name="first")
    assert summary["ran"] == dict.fromkeys(STAGES, True)
    for rel in ["data/prepared/train.jsonl", "data/prepared/val.jsonl", "models/sft/model.safetensors",
                "models/rl/model.safetensors", "metrics/eval.json", "metrics/gate.json", "metrics/rl.json",
                "data/predictions/val.jsonl", "plots/sft_loss.csv", "plots/rl_curve.csv", "dvc.lock"]:
        assert (project / rel).exists(), rel
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert 0.0 <= ev["sft"]["pass_rate"] <= 1.0 and ev["sft"]["samples"] == 12 and "rl" in ev
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert gate["decision"] == "pass" and gate["registered"]["alias"] == "champion"

    parent, n_parents = _last_parent(client)
    assert n_parents == 1 and parent.info.status == "FINISHED"
    assert parent.data.params["rl.steps"] == "2"
    assert {parent.data.tags[f"reftflow.precision.{s}"] for s in ("sft", "rl", "evaluate")} <= {"bf16", "float32"}
    assert "mlflow.source.git.commit" in parent.data.tags
    children = _children(client, parent.info.run_id)
    assert sorted(children) == sorted(TRACKED)
    assert children["sft"].data.tags["reftflow.base.kind"] == "tiny"
    assert all(c.info.status == "FINISHED" for c in children.values())

    # per-step metrics with their steps
    sft_loss = client.get_metric_history(children["sft"].info.run_id, "sft/loss")
    assert [m.step for m in sft_loss] == [1, 2, 3]
    rl_id = children["rl"].info.run_id
    for key in ["train_reward_mean", "rl/accuracy", "rl/grader_error_rate", "rl/lr", "rl/episodes_per_s"]:
        assert [m.step for m in client.get_metric_history(rl_id, key)] == [1, 2], key

    # dataset inputs carry DVC's md5 of the prepared data
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    train_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"].endswith("train.jsonl"))
    inputs = client.get_run(rl_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [train_md5]

    # artifacts: predictions, gate report, models
    eval_files = {f.path for f in client.list_artifacts(children["evaluate"].info.run_id, "predictions")}
    assert "predictions/val.jsonl" in eval_files
    assert client.list_artifacts(children["gate"].info.run_id, "gate")
    assert client.list_artifacts(rl_id, "model")
    assert "plots/rl_curves.png" in {f.path for f in client.list_artifacts(rl_id, "plots")}

    # the registry: a version aliased champion
    mv = client.get_model_version_by_alias("reftflow-policy", "champion")
    assert str(mv.version) == "1"

    # the champion answers as trained: a chat request, an item through the prompt template, a raw prompt
    import mlflow

    mlflow.set_tracking_uri(uri)
    champion = mlflow.pyfunc.load_model("models:/reftflow-policy@champion")
    question = "Ann has 3 pens. They get 2 more. How many pens now?"
    chat = champion.predict({"messages": [{"role": "user", "content": question}]})
    assert isinstance(chat, list) and len(chat) == 1 and isinstance(chat[0], str)
    item, raw = champion.predict([{"question": question}, f"Q: {question}\nA:"])
    assert item == raw  # the item went through data.prompt_template, as in training

    # 2. nothing changed: no stage runs, no child runs, nothing registered
    summary = pipeline(project_dir=str(project), run_name="noop")
    assert summary["ran"] == dict.fromkeys(STAGES, False)
    parent2, n_parents = _last_parent(client)
    assert n_parents == 2 and _children(client, parent2.info.run_id) == {}
    assert len(client.search_model_versions("name='reftflow-policy'")) == 1

    # 3. a key of an RL algorithm that is not the chosen one: nothing runs (dvc.yaml's rl.${rl.algorithm})
    chosen = load_params(project / "params.yaml").rl.algorithm
    other = next(a for a in ("ppo", "raft", "grpo") if a != chosen)
    set_params(project, rl={other: {"lr": 0.5}})
    summary = pipeline(project_dir=str(project), run_name="other-algorithm")
    assert summary["ran"] == dict.fromkeys(STAGES, False)

    # 4. a key of the chosen algorithm (and a stricter gate): rl runs again, and evaluate when the model or its
    # curve changed (evaluate's report plots the curve)
    # (the tiny model may earn no reward to learn from); the gate fails, nothing promoted
    outputs = ("models/rl/model.safetensors", "plots/rl_curve.csv")
    before = [(project / rel).read_bytes() for rel in outputs]
    set_params(project, rl={chosen: {"lr": 0.5}}, gate={"min_pass_rate": 1.0})  # the tiny model cannot reach it
    summary = pipeline(project_dir=str(project), run_name="rl-change")
    changed = [(project / rel).read_bytes() for rel in outputs] != before
    assert summary["ran"] == {"prepare": False, "base": False, "sft": False, "rl": True, "evaluate": changed,
                              "gate": True}
    assert summary["gate"]["decision"] == "fail" and summary["gate"]["registered"] is None
    parent4, _ = _last_parent(client)
    assert sorted(_children(client, parent4.info.run_id)) == sorted(["rl", "gate"] + (["evaluate"] if changed else []))
    assert len(client.search_model_versions("name='reftflow-policy'")) == 1
    assert str(client.get_model_version_by_alias("reftflow-policy", "champion").version) == "1"
