"""Promotion rules: pure functions from evaluation metrics to a decision with per-rule margins."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from reftflow.config import GateConfig


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    value: float
    threshold: float
    passed: bool
    at_most: bool = False
    """the value must stay at or below the threshold (an error rate), not reach it."""

    @property
    def margin(self) -> float:
        """How far on the passing (+) or failing (-) side of the threshold the value is."""
        return self.threshold - self.value if self.at_most else self.value - self.threshold


def _rule(name: str, description: str, value: float, threshold: float) -> Rule:
    return Rule(name, description, value, threshold, value >= threshold - 1e-12)


def _ceiling(name: str, description: str, value: float, threshold: float) -> Rule:
    return Rule(name, description, value, threshold, value <= threshold + 1e-12, at_most=True)


def decide(eval_metrics: dict, cfg: GateConfig, champion_pass_rate: float | None = None) -> dict:
    """Pass only when every rule holds. `champion_pass_rate`: the current champion's pass rate on the
    same val set (None when there is no comparable champion: the rule is then skipped)."""
    ppo, gain = eval_metrics["ppo"], eval_metrics["gain"]
    rules = [
        _rule("min_pass_rate", "RL model's held-out pass rate", ppo["pass_rate"], cfg.min_pass_rate),
        _rule("min_gain", "RL pass-rate gain over its SFT warm-up", gain["pass_rate"], cfg.min_gain),
        _rule("min_score", "RL model's mean grader score", ppo["mean_score"], cfg.min_score),
        _rule("min_score_gain", "RL mean-score gain over its SFT warm-up", gain["mean_score"], cfg.min_score_gain),
        # a grader that failed on many answers scored them 0: the other figures then measure the grader
        _ceiling("max_grader_error_rate", "share of the RL model's held-out answers the grader failed on",
                 ppo.get("grader_errors", 0.0) / max(ppo.get("samples", 1.0), 1.0), cfg.max_grader_error_rate),
    ]
    if champion_pass_rate is not None:
        rules.append(_rule("no_regression", "RL pass rate vs the current champion", ppo["pass_rate"],
                           champion_pass_rate))
    passed = all(r.passed for r in rules)
    return {
        "decision": "pass" if passed else "fail",
        "passed": passed,
        "rules": [{**{k: v for k, v in asdict(r).items() if k != "at_most"}, "margin": r.margin} for r in rules],
    }


def report_markdown(decision: dict, registered: dict | None = None) -> str:
    lines = [f"# Gate: **{decision['decision'].upper()}**", "", "| rule | what | value | threshold | margin | |",
             "|---|---|---|---|---|---|"]
    for r in decision["rules"]:
        mark = "pass" if r["passed"] else "FAIL"
        lines.append(f"| `{r['name']}` | {r['description']} | {r['value']:.4f} | {r['threshold']:.4f} "
                     f"| {r['margin']:+.4f} | {mark} |")
    lines.append("")
    if registered:
        lines.append(f"Registered `{registered['name']}` version {registered['version']} with alias "
                     f"`{registered['alias']}` ({registered['model_uri']}).")
    else:
        lines.append("Nothing was promoted.")
    return "\n".join(lines) + "\n"
