"""Stage `gate`: apply `gate.*` rules to metrics/eval.json; on pass, register the RL model (models/rl) as `champion`."""

from __future__ import annotations

import json

from reftflow import paths
from reftflow.config import Params
from reftflow.prompting import PROMPT_KEYS
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.gate import decide, report_markdown
    from reftflow.io import atomic_write_text, write_json
    from reftflow.io import file_md5
    from reftflow.registry import champion_info, register_champion
    from reftflow.tracking import stage_run

    cfg = params.gate
    eval_metrics = json.loads(paths.EVAL_METRICS.read_text())
    val_md5 = file_md5(paths.VAL)
    champion = champion_info(cfg.registered_model_name)
    # compare with the champion only when it was measured on the very same held-out file
    champion_pass = champion.get("pass_rate") if champion and champion.get("val_md5") == val_md5 else None
    decision = decide(eval_metrics, cfg, champion_pass)
    registered = None
    with stage_run("gate", {"gate": cfg.model_dump()}) as run_log:
        run_log.log_metrics({f"gate/{r['name']}_margin": r["margin"] for r in decision["rules"]})
        run_log.log_metrics({"gate/passed": float(decision["passed"])})
        run_log.set_tags({"reftflow.gate.decision": decision["decision"]})
        if decision["passed"]:
            registered = register_champion(run_log, paths.RL_MODEL, cfg.registered_model_name,
                                           prompting(params),
                                           tags={"val_md5": val_md5, "pass_rate": eval_metrics["rl"]["pass_rate"]},
                                           max_new_tokens=params.evaluate.max_new_tokens)
        decision["registered"] = registered
        write_json(paths.GATE_METRICS, decision)
        atomic_write_text(paths.GATE_REPORT, report_markdown(decision, registered))
        run_log.log_dict(decision, "gate/gate.json")
        run_log.log_artifact(paths.GATE_REPORT, "gate")
    failed = [r["name"] for r in decision["rules"] if not r["passed"]]
    print(f"gate: {decision['decision'].upper()}" + (f" (failed: {', '.join(failed)})" if failed else
                                                       f" → {registered['name']} v{registered['version']} @champion"))


def prompting(params: Params) -> dict:
    """The `data` keys that turn an item into a prompt (dvc.yaml's gate stage reads them): the registered
    model renders requests with them."""
    return {k: getattr(params.data, k) for k in PROMPT_KEYS}


if __name__ == "__main__":
    main("gate", __doc__, run)
