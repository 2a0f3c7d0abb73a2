"""`score_model` and `label_model` (OpenAI grader objects), judged by a local model (`judge.py`).

score_model: the judge replies with a number within `range` (default [0, 1]); the reward is that number
rescaled to [0, 1]. label_model: the judge replies with one of `labels`; the reward is 1.0 when it is one
of `passing_labels`, else 0.0. Replies are parsed strictly (`parse_score`, `parse_label`): any other reply
is that sample's grader error, counted apart, never a guess. A grader judges each distinct prompt (the
rendered `input` messages) once: identical (item, answer) pairs cost one judge call per run.
"""

from __future__ import annotations

import re
import string
import sys
from abc import abstractmethod
from collections import OrderedDict
from typing import Any

from reftflow.base_model import BaseSource, ModelSourceError
from reftflow.graders.base import GradeResult, Grader, SampleError, checked_score, describe, one_line
from reftflow.graders.judge import Judge, Sampling, check_source, load_judge
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

ROLES = ("system", "developer", "user", "assistant")
MAX_TOKENS_KEYS = ("max_completions_tokens", "max_completion_tokens", "max_tokens")
"""OpenAI's graders spell it max_completions_tokens; its chat APIs max_completion_tokens and max_tokens."""
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
SAMPLING_KEYS = ("temperature", "top_p", "seed", *MAX_TOKENS_KEYS, "reasoning_effort")
CACHE_SIZE = 100_000
"""judge replies a grader remembers (least recently used go first): RL's samples repeat within a run."""

Conversation = tuple[tuple[str, str], ...]
"""a rendered judge prompt: (role, text) per message; hashable, so it keys the cache."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_AROUND_NUMBER = " \t\r\n*_`\"'"  # markdown emphasis, code ticks and quotes around a bare reply
_AROUND_LABEL = string.punctuation + string.whitespace


def parse_score(reply: str, lo: float, hi: float) -> float:
    """The judge's score, rescaled from [lo, hi] to [0, 1]. The reply must be the number alone: whitespace,
    markdown emphasis, backticks and quotes around it and one final period are allowed, nothing else.
    "Score: 7", "7/10" or "7 out of 10" are errors: picking one number from a sentence is a guess, and a
    wrong guess would be a silent wrong reward (a reply cut off at max tokens would be one too)."""
    text = reply.strip(_AROUND_NUMBER)
    if text.endswith(".") and _NUMBER.fullmatch(text[:-1]):
        text = text[:-1]
    if not _NUMBER.fullmatch(text):
        raise SampleError(f"the judge replied {one_line(reply, 80)!r}, not a number alone")
    value = float(text)
    if not lo <= value <= hi:
        raise SampleError(f"the judge replied {value:g}, outside range [{lo:g}, {hi:g}]")
    return (value - lo) / (hi - lo)


def label_key(text: str) -> str:
    """How replies and labels are compared: surrounding whitespace and punctuation stripped, case folded."""
    return text.strip(_AROUND_LABEL).casefold()


def parse_label(reply: str, labels: dict[str, str]) -> str:
    """The label the judge replied (as `labels` writes it; `labels` maps `label_key` → label). The reply must
    be exactly one label, up to case and surrounding whitespace and punctuation ("Yes." is `yes`); "yes, it
    does" is an error."""
    key = label_key(reply)
    if key not in labels:
        raise SampleError(f"the judge replied {one_line(reply, 80)!r}, not one of the labels ({', '.join(labels.values())})")
    return labels[key]


class ModelGrader(Grader):
    """What both judged types share: render the prompt, ask the judge once per distinct prompt, parse."""

    def __init__(self, name: str, label: str, messages: list[tuple[str, Template]], source: BaseSource,
                 sampling: Sampling, device: str = "auto", bf16: Any = "auto") -> None:
        super().__init__(name, label)
        self.messages, self.source, self.sampling = messages, source, sampling
        self.device, self.bf16 = device, bf16
        # loaded on the first grade, not when built (graders are built before every stage starts); a test
        # may set any object with Judge's `complete`
        self.judge: Judge | None = None
        self._load_error: SampleError | None = None
        self._replies: OrderedDict[Conversation, str] = OrderedDict()

    @abstractmethod
    def judged(self, reply: str) -> float:
        """The score of a judge's reply; SampleError when the reply breaks the parsing rules."""

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        prompts: list[Conversation | GradeResult] = []
        for text, item in zip(output_texts, items):
            try:
                prompts.append(tuple((role, t.render(text, item)) for role, t in self.messages))
            except Exception as e:  # noqa: BLE001 - an item that lacks a field: that sample's error
                prompts.append(self._failed(e))
        replies = self._replies_for([p for p in prompts if isinstance(p, tuple)])
        return [p if isinstance(p, GradeResult) else self._result(replies[p]) for p in prompts]

    def _replies_for(self, prompts: list[Conversation]) -> dict[Conversation, str | Exception]:
        """Each distinct prompt's reply: from this run's cache, else from one batched judge call."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._replies]
        asked = dict(zip(new, self._ask(new))) if new else {}
        out: dict[Conversation, str | Exception] = {}
        for p in dict.fromkeys(prompts):
            if p in asked:
                out[p] = asked[p]
                if isinstance(asked[p], str):
                    self._replies[p] = asked[p]
            else:
                out[p] = self._replies[p]
                self._replies.move_to_end(p)
        while len(self._replies) > CACHE_SIZE:
            self._replies.popitem(last=False)
        return out

    def _ask(self, prompts: list[Conversation]) -> list[str | Exception]:
        conversations = [[{"role": role, "content": text} for role, text in p] for p in prompts]
        try:
            judge = self._judge()
            return list(judge.complete(conversations, self.sampling, self._use_bf16(judge)))
        except Exception as e:  # noqa: BLE001 - a judge that cannot load or run fails the batch's samples, not the run
            return [e] * len(prompts)

    def _judge(self):
        if self.judge is None:
            if self._load_error is not None:  # tried once: do not pay a failing load on every batch
                raise self._load_error
            try:
                self.judge = load_judge(self.source, self.device)
            except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, RuntimeError...
                self._load_error = SampleError(f"the judge {self.source.spec!r} could not be loaded ({describe(e)})")
                print(f"reftflow: grader {self.label}: {self._load_error}", file=sys.stderr, flush=True)
                raise self._load_error from None
        return self.judge

    def _use_bf16(self, judge) -> bool:
        from reftflow.precision import use_bf16

        device = getattr(judge, "device", None)
        return bool(device is not None and use_bf16(self.bf16, device))

    def _result(self, reply: str | Exception) -> GradeResult:
        if isinstance(reply, Exception):
            return self._failed(reply)
        try:
            score = checked_score(self.judged(reply))
        except Exception as e:  # noqa: BLE001 - a reply outside the rules: that sample's error
            return self._failed(e)
        return GradeResult(score, {self.name: score}, None)

    def _failed(self, e: BaseException) -> GradeResult:
        return GradeResult(0.0, {self.name: 0.0}, f"grader {self.label}: {describe(e)}")


class ScoreModelGrader(ModelGrader):
    type = "score_model"

    def __init__(self, *common: Any, score_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(*common)
        self.range = score_range

    def judged(self, reply: str) -> float:
        return parse_score(reply, *self.range)


class LabelModelGrader(ModelGrader):
    type = "label_model"

    def __init__(self, *common: Any, labels: tuple[str, ...] = (), passing_labels: tuple[str, ...] = ()) -> None:
        super().__init__(*common)
        self.labels, self.passing_labels = labels, passing_labels
        self._by_key = {label_key(label): label for label in labels}

    def judged(self, reply: str) -> float:
        return 1.0 if parse_label(reply, self._by_key) in self.passing_labels else 0.0


# --- building from the grader object ---------------------------------------------------------------------


def build_score_model(spec: dict, ctx: BuildContext) -> ScoreModelGrader:
    ctx.check_keys(spec, required=("model", "input"), optional=("range", "sampling_params", "pass_threshold"))
    lo, hi = _range(spec, ctx)
    if "pass_threshold" in spec:  # OpenAI's evals use it; the reward is the rescaled score (checked, then unused)
        ctx.number(spec, "pass_threshold", lo, lo, hi)
    return ScoreModelGrader(*_common(spec, ctx), score_range=(lo, hi))


def build_label_model(spec: dict, ctx: BuildContext) -> LabelModelGrader:
    ctx.check_keys(spec, required=("model", "input", "labels", "passing_labels"), optional=("sampling_params",))
    labels = _labels(spec, ctx, "labels")
    passing = _labels(spec, ctx, "passing_labels")
    known = {label_key(label) for label in labels}
    for label in passing:
        if label_key(label) not in known:
            ctx.fail(f"field 'passing_labels': {label!r} is not one of 'labels' ({', '.join(labels)})")
    by_key = {label_key(label): label for label in labels}
    return LabelModelGrader(*_common(spec, ctx), labels=labels,
                            passing_labels=tuple(by_key[label_key(p)] for p in passing))


def _common(spec: dict, ctx: BuildContext) -> tuple:
    """(name, label, messages, source, sampling, device, bf16): what every judged grader is built from."""
    model = spec["model"]
    if not isinstance(model, str) or not model.strip():
        ctx.fail("field 'model' must be a non-empty string (an HF id, a model directory, a .gguf file or "
                 "wheel:<package>/<file>.gguf)")
    try:
        source = check_source(model, ctx.base_dir)
    except ModelSourceError as e:
        ctx.fail(str(e))
    cfg = ctx.model_cfg
    return (spec.get("name", ctx.name), ctx.label, _messages(spec, ctx), source, _sampling(spec, ctx),
            getattr(cfg, "device", "auto"), getattr(cfg, "bf16", "auto"))


def _messages(spec: dict, ctx: BuildContext) -> list[tuple[str, Template]]:
    messages = spec["input"]
    if not isinstance(messages, list) or not messages:
        ctx.fail("field 'input' must be a non-empty list of messages ({role, content})")
    out = []
    for i, message in enumerate(messages):
        where = f"input[{i}]"
        if not isinstance(message, dict):
            ctx.fail(f"field '{where}' must be a message {{role, content}}, got {type(message).__name__}")
        for key in message:
            if key not in ("role", "content", "type"):
                ctx.fail(f"field '{where}': unknown key {key!r} (a message has role, content and type: message)")
        if message.get("type", "message") != "message":
            ctx.fail(f"field '{where}.type' must be 'message', got {message['type']!r}")
        role = message.get("role")
        if role not in ROLES:
            ctx.fail(f"field '{where}.role' must be one of {', '.join(ROLES)}, got {role!r}")
        text = {f"{where}.content": _content_text(message.get("content"), ctx, where)}
        # chat templates know system, not OpenAI's newer name for it
        out.append(("system" if role == "developer" else role, ctx.template(text, f"{where}.content")))
    return out


def _content_text(content: Any, ctx: BuildContext, where: str) -> str:
    """A message's content: a string, a text part ({type: input_text, text}) or a list of text parts."""
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if isinstance(part, str) and not isinstance(content, list):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text") \
                and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            ctx.fail(f"field '{where}.content' must be text: a string or {{type: input_text, text}} parts "
                     "(a local judge reads no images or audio)")
    return "".join(texts)


def _sampling(spec: dict, ctx: BuildContext) -> Sampling:
    params = spec.get("sampling_params", {})
    if not isinstance(params, dict):
        ctx.fail(f"field 'sampling_params' must be a mapping, got {type(params).__name__}")
    for key in params:
        if key not in SAMPLING_KEYS:
            ctx.fail(f"unknown field 'sampling_params.{key}' (fields: {', '.join(SAMPLING_KEYS)})")
    named = [k for k in MAX_TOKENS_KEYS if k in params]
    if len(named) > 1:
        ctx.fail(f"field 'sampling_params': {' and '.join(named)} name the same limit; give one")
    sub = {f"sampling_params.{k}": v for k, v in params.items()}  # so errors name the nested field
    if "reasoning_effort" in params:  # OpenAI's reasoning models read it; a local judge has no such knob
        ctx.choice(sub, "sampling_params.reasoning_effort", REASONING_EFFORTS)
    top_p = ctx.number(sub, "sampling_params.top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        ctx.fail("field 'sampling_params.top_p' must be above 0 (it keeps the most likely tokens up to this mass)")
    return Sampling(temperature=ctx.number(sub, "sampling_params.temperature", 0.0, 0.0, 2.0), top_p=top_p,
                    max_tokens=ctx.integer(sub, f"sampling_params.{named[0] if named else MAX_TOKENS_KEYS[0]}",
                                           Sampling.max_tokens, 1, 4096),
                    seed=ctx.integer(sub, "sampling_params.seed", 0, 0, 2**32 - 1))


def _range(spec: dict, ctx: BuildContext) -> tuple[float, float]:
    value = spec.get("range", [0, 1])
    if not isinstance(value, list) or len(value) != 2:
        ctx.fail(f"field 'range' must be [min, max], got {value!r}")
    lo, hi = (ctx.number({"range": v}, "range", 0.0, float("-inf"), float("inf")) for v in value)
    if not lo < hi:
        ctx.fail(f"field 'range' must be [min, max] with min < max, got {value!r}")
    return lo, hi


def _labels(spec: dict, ctx: BuildContext, key: str) -> tuple[str, ...]:
    value = spec[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        ctx.fail(f"field {key!r} must be a non-empty list of strings, got {value!r}")
    seen: dict[str, str] = {}
    for label in value:
        k = label_key(label)
        if not k:
            ctx.fail(f"field {key!r}: label {label!r} is empty once whitespace and punctuation are stripped")
        if k in seen:
            ctx.fail(f"field {key!r}: {seen[k]!r} and {label!r} are the same label (replies are compared "
                     "ignoring case and surrounding punctuation)")
        seen[k] = label
    return tuple(value)
