"""Final-answer extraction and numeric comparison (GSM8K style: the answer follows `#### `).

ReFT (Luong et al., 2024, §3) scores a sampled chain of thought by its final numeric answer;
verl's `reward_score/gsm8k.py` uses the same `#### N` convention with a strict and a flexible mode.
"""

from __future__ import annotations

import math
import re

# a space may follow `$` (`$ 5`) but not a sign: in `20 - 8` the minus is subtraction, the answer is 8
_NUMBER = r"[-+]?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?(?:\$\s?)?\.\d+"
_GSM8K = re.compile(r"####\s*(" + _NUMBER + r")")
_ANY_NUMBER = re.compile(_NUMBER)
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")


def parse_number(text: str | None) -> float | None:
    """`'$1,234.50'` → 1234.5; None when the text is not a number."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_answer(text: str, method: str = "gsm8k") -> str | None:
    """The final answer as written, or None when none can be extracted.

    gsm8k: the number after the last `####`; last_number: the last number in the text;
    boxed: the content of the last `\\boxed{...}`.
    """
    if method == "gsm8k":
        found = _GSM8K.findall(text)
    elif method == "last_number":
        found = _ANY_NUMBER.findall(text)
    elif method == "boxed":
        found = _BOXED.findall(text)
    else:
        raise ValueError(f"unknown extraction method {method!r} (expected gsm8k, last_number or boxed)")
    return found[-1].strip() if found else None


def format_number(value: float) -> str:
    """Canonical text of a final answer: 14.0 → '14', 2.5 → '2.5'."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
