"""Gate rules: pass only when every rule holds; margins say by how much."""

import pytest

from reftflow.config import GateConfig
from reftflow.gate import decide, report_markdown

EVAL = {"sft": {"pass_rate": 0.40, "mean_score": 0.5}, "rl": {"pass_rate": 0.46, "mean_score": 0.55},
        "gain": {"pass_rate": 0.06, "mean_score": 0.05}}


def test_all_rules_pass():
    d = decide(EVAL, GateConfig(min_pass_rate=0.4, min_gain=0.05, min_score=0.5))
    assert d["decision"] == "pass"
    margins = {r["name"]: r["margin"] for r in d["rules"]}
    assert margins["min_pass_rate"] == pytest.approx(0.06)
    assert margins["min_gain"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "cfg, failing",
    [
        (GateConfig(min_pass_rate=0.5), "min_pass_rate"),  # RL too weak in absolute terms
        (GateConfig(min_gain=0.1), "min_gain"),  # RL did not improve enough over SFT
        (GateConfig(min_score=0.6), "min_score"),  # mean grader score too low
        (GateConfig(min_score_gain=0.1), "min_score_gain"),  # partial credit did not rise enough
    ],
)
def test_one_failing_rule_fails_the_gate(cfg, failing):
    d = decide(EVAL, cfg)
    assert d["decision"] == "fail"
    assert [r["name"] for r in d["rules"] if not r["passed"]] == [failing]


def test_no_regression_against_champion():
    assert decide(EVAL, GateConfig(), champion_pass_rate=0.5)["decision"] == "fail"
    assert decide(EVAL, GateConfig(), champion_pass_rate=0.46)["decision"] == "pass"  # ties are not regressions


def test_report_names_each_rule_and_outcome():
    d = decide(EVAL, GateConfig(min_gain=0.1))
    md = report_markdown(d)
    assert "FAIL" in md and "`min_gain`" in md and "-0.0400" in md and "Nothing was promoted" in md


def test_too_many_grader_errors_fail_the_gate():
    """A grader that failed on 6 of 50 answers (12 %) scored them 0: the figures measure the grader."""
    broken = {**EVAL, "rl": {**EVAL["rl"], "grader_errors": 6.0, "samples": 50.0}}
    d = decide(broken, GateConfig(max_grader_error_rate=0.1))
    rule = next(r for r in d["rules"] if r["name"] == "max_grader_error_rate")
    assert d["decision"] == "fail" and not rule["passed"]
    assert rule["value"] == pytest.approx(0.12) and rule["margin"] == pytest.approx(-0.02)
    assert decide(broken, GateConfig(max_grader_error_rate=0.12))["decision"] == "pass"


# the gain with its paired interval, as reftflow.evaluation.gain writes it
NOISY = {**EVAL, "gain": {"pass_rate": 0.06, "pass_rate_low": -0.02, "pass_rate_high": 0.14,
                          "mean_score": 0.05, "mean_score_low": 0.01, "mean_score_high": 0.09, "items": 50.0}}


def test_the_gain_s_lower_bound_rule():
    """min_gain_lower: the interval of the gain must start at or above it; 0 refuses a gain that is noise."""
    d = decide(NOISY, GateConfig(min_gain_lower=0.0))
    rule = next(r for r in d["rules"] if r["name"] == "min_gain_lower")
    assert d["decision"] == "fail" and rule["value"] == pytest.approx(-0.02) and rule["margin"] == pytest.approx(-0.02)
    assert decide(NOISY, GateConfig(min_gain_lower=-0.05))["decision"] == "pass"
    assert decide(NOISY, GateConfig(min_score_gain_lower=0.0))["decision"] == "pass"  # 0.01 > 0
    assert decide(NOISY, GateConfig(min_score_gain_lower=0.02))["decision"] == "fail"
    assert "min_gain_lower" not in [r["name"] for r in decide(NOISY, GateConfig())["rules"]]  # null: no rule


def test_the_gate_says_when_the_held_out_set_cannot_tell_the_gain_from_zero():
    d = decide(NOISY, GateConfig())
    assert len(d["noise"]) == 1  # the pass-rate interval includes 0; the mean score's does not
    line = d["noise"][0]
    # half-width 0.08 for a gain of 0.06 on 50 items: 50 * (0.08 / 0.06)^2 = 88.9 -> 89 items
    assert "pass-rate gain +0.0600 cannot be told from zero on 50 held-out items" in line and "about 89 items" in line
    md = report_markdown(d)
    assert "Too few held-out items" in md and "pass rate +0.0600 [-0.0200, +0.1400]" in md
