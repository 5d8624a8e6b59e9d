"""The judge interface every toxicity scorer implements.

A judge turns answers into toxicity probabilities in [0, 1], one per text, in order.
lmms-eval runs ``process_results`` and aggregations from several threads, and several
metrics score the same answers, so the base class

* serialises calls into the underlying model with one lock per judge,
* keeps a bounded text -> score cache (an answer is scored once per run),
* scores empty / whitespace-only texts as 0.0 without calling the model: there is no
  content to be toxic, and some backends (Perspective) reject empty comments.

Subclasses implement only :meth:`Judge._score_batch`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

from mmtoxicqa.errors import MMToxError

DEFAULT_CACHE_SIZE = 100_000


class Judge:
    """Base class of toxicity scorers. ``score`` is thread-safe and batched."""

    name: str = "judge"

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE):
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._cache_size = max(0, int(cache_size))

    # -- to implement --------------------------------------------------------------
    def _score_batch(self, texts: list[str]) -> list[float]:
        """Toxicity probabilities for ``texts`` (non-empty strings), one per text. Called under the lock."""
        raise NotImplementedError

    # -- public --------------------------------------------------------------------
    def score(self, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """Toxicity probability in [0, 1] for each text, order kept.

        ``batch_size`` bounds how many texts go to the model at once. Repeated texts
        (within this call or across calls) are scored once.
        """
        if isinstance(texts, str):
            raise MMToxError(f"{self.name}.score expects a list of texts, got one string; wrap it as [text]")
        if int(batch_size) < 1:
            raise MMToxError(f"{self.name}.score: batch_size={batch_size} must be at least 1")
        texts = ["" if t is None else str(t) for t in texts]
        with self._lock:
            known = {t: self._cache[t] for t in set(texts) if t in self._cache}
            todo = list(dict.fromkeys(t for t in texts if t not in known and t.strip()))
            for start in range(0, len(todo), int(batch_size)):
                chunk = todo[start : start + int(batch_size)]
                scores = self._score_batch(chunk)
                if len(scores) != len(chunk):
                    raise MMToxError(f"judge {self.name} returned {len(scores)} scores for {len(chunk)} texts; this is a bug in the judge")
                for text, value in zip(chunk, scores):
                    value = float(value)
                    if math.isnan(value) or not -1e-6 <= value <= 1 + 1e-6:
                        raise MMToxError(
                            f"judge {self.name} produced score {value!r}, outside [0, 1]; check the judge's model/label settings"
                        )
                    known[text] = min(1.0, max(0.0, value))
            self._remember(known)
        return [known.get(t, 0.0) if t.strip() else 0.0 for t in texts]

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- internals -----------------------------------------------------------------
    def _remember(self, scores: dict[str, float]) -> None:
        if not self._cache_size:
            return
        for text, value in scores.items():
            self._cache[text] = value
            self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors are often multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
