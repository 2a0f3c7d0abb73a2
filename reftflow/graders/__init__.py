"""Graders: the reward. A grader maps (a sample's output text, its item) to a score in [0, 1].

Types (declared in JSON/YAML, OpenAI grader-object field names where the type exists there): string_check,
text_similarity, numeric_answer, ranked_list, program_answer, python, multi, and score_model and label_model,
judged by a local model (judge.py). See docs/graders.md.

    grader = build_grader({"type": "numeric_answer", "name": "acc", "reference": "{{ item.answer }}"})
    grader.grade("... #### 12", {"answer": "12"}).score  # 1.0

Importing this package starts nothing: sandbox workers start on the first sandboxed grade, a judge model
loads on the first judged grade.
"""

from __future__ import annotations

from reftflow.config import DEFAULT_GRADER
from reftflow.graders.base import GradeResult, Grader, GraderConfigError
from reftflow.graders.reward_fn import as_reward_function
from reftflow.graders.spec import build_grader, load_grader_spec

__all__ = [
    "DEFAULT_GRADER",
    "GradeResult",
    "Grader",
    "GraderConfigError",
    "as_reward_function",
    "build_grader",
    "load_grader_spec",
]
