"""``profanity``: alt-profanity-check's linear SVM over TF-IDF features (offline, fast, the default).

It detects profanity, not toxicity in general: a polite but hateful answer scores low.
Use it for quick runs and CI; report a model-based judge (detoxify, perspective) in papers.
"""

from __future__ import annotations

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.registry import register_judge
from mmtoxicqa.scoring.base import DEFAULT_CACHE_SIZE, Judge, first_line


@register_judge("profanity")
class ProfanityJudge(Judge):
    name = "profanity"

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE):
        super().__init__(cache_size=cache_size)
        try:
            from profanity_check import predict_prob  # optional: only the profanity judge needs it
        except Exception as exc:  # ImportError, or a pickled model that does not load with this scikit-learn
            raise MMToxError(
                f"judge 'profanity' needs alt-profanity-check ({first_line(exc)}); run `pip install alt-profanity-check`"
            ) from exc
        self._predict_prob = predict_prob

    def _score_batch(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict_prob(texts)]
