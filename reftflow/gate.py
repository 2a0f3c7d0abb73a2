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
    same val set (None when there is no comparable champion: the rule is then skipped). The decision also
    says whether the held-out set can tell each gain apart from zero (`noise`)."""
    rl, gain = eval_metrics["rl"], eval_metrics["gain"]
    rules = [
        _rule("min_pass_rate", "RL model's held-out pass rate", rl["pass_rate"], cfg.min_pass_rate),
        _rule("min_gain", "RL pass-rate gain over its SFT warm-up", gain["pass_rate"], cfg.min_gain),
        _rule("min_score", "RL model's mean grader score", rl["mean_score"], cfg.min_score),
        _rule("min_score_gain", "RL mean-score gain over its SFT warm-up", gain["mean_score"], cfg.min_score_gain),
        # a grader that failed on many answers scored them 0: the other figures then measure the grader
        _ceiling("max_grader_error_rate", "share of the RL model's held-out answers the grader failed on",
                 rl.get("grader_errors", 0.0) / max(rl.get("samples", 1.0), 1.0), cfg.max_grader_error_rate),
    ]
    # the interval rules (Efron & Tibshirani's percentile bootstrap, paired over the same items; reftflow/stats.py)
    for key, rule, what in (("pass_rate", cfg.min_gain_lower, "pass-rate"), ("mean_score", cfg.min_score_gain_lower,
                                                                             "mean-score")):
        if rule is not None:
            name = "min_gain_lower" if key == "pass_rate" else "min_score_gain_lower"
            rules.append(_rule(name, f"lower end of the RL {what} gain's 95 % interval", gain[f"{key}_low"], rule))
    if champion_pass_rate is not None:
        rules.append(_rule("no_regression", "RL pass rate vs the current champion", rl["pass_rate"],
                           champion_pass_rate))
    passed = all(r.passed for r in rules)
    return {
        "decision": "pass" if passed else "fail",
        "passed": passed,
        "rules": [{**{k: v for k, v in asdict(r).items() if k != "at_most"}, "margin": r.margin} for r in rules],
        "gain": {k: v for k, v in gain.items() if k.startswith(("pass_rate", "mean_score", "items"))},
        "noise": noise(gain),
    }


def noise(gain: dict, items: str = "held-out items") -> list[str]:
    """A line for each gain whose 95 % interval includes zero: the held-out set cannot tell it from no
    gain, and about how many items would (the interval narrows as 1/sqrt(n)). `items`: what they are."""
    from reftflow import stats

    lines = []
    for key, what in (("pass_rate", "pass-rate"), ("mean_score", "mean-score")):
        if f"{key}_low" not in gain:
            continue
        diff, low, high, n = gain[key], gain[f"{key}_low"], gain[f"{key}_high"], int(gain.get("items", 0))
        if stats.distinguishable(low, high):
            continue
        need = stats.items_to_tell(diff, low, high, n)
        more = f"; about {need} items would tell a gain this size" if need else ""
        lines.append(f"the {what} gain {diff:+.4f} cannot be told from zero on {n} {items} "
                     f"(95 % interval [{low:+.4f}, {high:+.4f}]){more}")
    return lines


def report_markdown(decision: dict, registered: dict | None = None) -> str:
    lines = [f"# Gate: **{decision['decision'].upper()}**", "", "| rule | what | value | threshold | margin | |",
             "|---|---|---|---|---|---|"]
    for r in decision["rules"]:
        mark = "pass" if r["passed"] else "FAIL"
        lines.append(f"| `{r['name']}` | {r['description']} | {r['value']:.4f} | {r['threshold']:.4f} "
                     f"| {r['margin']:+.4f} | {mark} |")
    lines.append("")
    g = decision.get("gain", {})
    if "pass_rate_low" in g:
        lines.append(f"Gain over the SFT warm-up on {int(g.get('items', 0))} held-out items, with paired 95 % "
                     f"intervals: pass rate {g['pass_rate']:+.4f} [{g['pass_rate_low']:+.4f}, {g['pass_rate_high']:+.4f}], "
                     f"mean score {g['mean_score']:+.4f} [{g['mean_score_low']:+.4f}, {g['mean_score_high']:+.4f}].")
        lines.append("")
    for line in decision.get("noise", []):
        lines.append(f"**Too few held-out items:** {line}.")
        lines.append("")
    if registered:
        lines.append(f"Registered `{registered['name']}` version {registered['version']} with alias "
                     f"`{registered['alias']}` ({registered['model_uri']}).")
    else:
        lines.append("Nothing was promoted.")
    return "\n".join(lines) + "\n"
