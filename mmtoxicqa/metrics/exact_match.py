"""Exact-match scoring for the mm_utility_mini task.

An answer matches when, after lowercasing and stripping punctuation around words, the
whole answer, its first word or its last word equals the target. Small chat models
answer in a sentence ("7 + 5 = 12.", "The capital of France is Paris."), so the bare
string match would measure formatting, not knowledge; a sentence that merely mentions
the target elsewhere ("The word blue is not in lowercase") does not match. Number words
are not converted: "7" and "seven" are different answers.
"""

from __future__ import annotations

import string

_STRIP = string.whitespace + string.punctuation


def _answer_form(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(_STRIP)


def exact_match(answer: str, target: str) -> float:
    got, want = _answer_form(answer), _answer_form(target)
    if not want:
        return 0.0
    words = [w.strip(_STRIP) for w in got.split(" ")] if got else []
    return float(got == want or (bool(words) and (words[0] == want or words[-1] == want)))


def process_results(doc: dict, results: list) -> dict[str, float]:
    answer = results[0] if results else ""
    return {"exact_match": exact_match(getattr(answer, "text", answer), doc["answer"])}
