"""`text_similarity` (OpenAI grader object): a similarity metric between input and reference, in [0, 1].

fuzzy_match: rapidfuzz's normalized Levenshtein ratio; bleu: sacrebleu sentence BLEU / 100 (effective
order, so short sentences are not zeroed); gleu: NLTK sentence GLEU (Wu et al., 2016) on whitespace tokens;
rouge_1..rouge_5, rouge_l: Google's rouge-score F-measure; meteor: NLTK METEOR, only where NLTK's WordNet
data is installed. Each library is imported when a grader that uses it is built, never at import time.
OpenAI's `cosine` needs an embeddings model and is refused: reftflow grades offline.
"""

from __future__ import annotations

from typing import Callable

from reftflow.graders.base import PureGrader
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

Metric = Callable[[str, str], float]
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class MetricUnavailable(Exception):
    pass


def make_metric(name: str) -> Metric:
    """The metric function (hypothesis, reference) -> [0, 1]; MetricUnavailable when it cannot run offline."""
    if name == "fuzzy_match":
        from rapidfuzz import fuzz

        return lambda hyp, ref: fuzz.ratio(hyp, ref) / 100.0
    if name == "bleu":
        from sacrebleu.metrics import BLEU

        bleu = BLEU(effective_order=True)
        return lambda hyp, ref: bleu.sentence_score(hyp, [ref]).score / 100.0
    if name == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return lambda hyp, ref: float(sentence_gleu([ref.split()], hyp.split()))
    if name.startswith("rouge_"):
        from rouge_score import rouge_scorer

        key = "rougeL" if name == "rouge_l" else f"rouge{name[-1]}"
        scorer = rouge_scorer.RougeScorer([key])
        return lambda hyp, ref: scorer.score(ref, hyp)[key].fmeasure
    if name == "meteor":
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            raise MetricUnavailable(
                "evaluation_metric 'meteor' needs NLTK's WordNet data, which is not installed "
                "(python -m nltk.downloader wordnet, on a machine with network access)"
            ) from None
        from nltk.translate.meteor_score import meteor_score

        return lambda hyp, ref: float(meteor_score([ref.split()], hyp.split()))
    if name == "cosine":
        raise MetricUnavailable("evaluation_metric 'cosine' needs an embeddings model; reftflow grades offline")
    raise MetricUnavailable(f"unknown evaluation_metric {name!r}")


class TextSimilarityGrader(PureGrader):
    type = "text_similarity"

    def __init__(self, name: str, label: str, input: Template, reference: Template, metric: str) -> None:
        super().__init__(name, label)
        self.input, self.reference, self.evaluation_metric = input, reference, metric
        self._metric = make_metric(metric)

    def score(self, output_text: str, item: dict) -> float:
        value = self._metric(self.input.render(output_text, item), self.reference.render(output_text, item))
        # sacrebleu's 100.00000000000004 and friends: clamp float noise, the metrics are in [0, 1] by definition
        return min(1.0, max(0.0, float(value)))


def build(spec: dict, ctx: BuildContext) -> TextSimilarityGrader:
    # pass_threshold is accepted for OpenAI compatibility (evals use it); the reward is the raw metric
    ctx.check_keys(spec, required=("input", "reference", "evaluation_metric"), optional=("pass_threshold",))
    metric = ctx.choice(spec, "evaluation_metric", METRICS)
    try:
        return TextSimilarityGrader(
            spec.get("name", ctx.name), ctx.label, ctx.template(spec, "input"), ctx.template(spec, "reference"), metric
        )
    except MetricUnavailable as e:
        ctx.fail(str(e))
    except ImportError as e:
        ctx.fail(f"evaluation_metric {metric!r} needs a library that is not installed ({e})")
