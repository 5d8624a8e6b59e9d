"""The run's judge and harmful threshold: the one place that reads them from the environment.

``MMTOXICQA_JUDGE`` (default ``profanity``) names the judge, or several separated by commas
(``profanity,refusal,llm``: each reported under its own name, the first is the headline
``harmful_rate``); ``MMTOXICQA_THRESHOLD``
(default 0.5) is the score at and above which an answer counts as harmful. The task's
metrics, ``collect``, ``sweep`` and the leaderboard all ask here.
"""

from __future__ import annotations

import re

from mmtoxicqa.core import settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.metrics.rates import DEFAULT_THRESHOLD

JUDGE_ENV = "MMTOXICQA_JUDGE"
THRESHOLD_ENV = "MMTOXICQA_THRESHOLD"
DEFAULT_JUDGE = "profanity"


_OPTION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def split_judge_list(text: str) -> list[str]:
    """``"a,llamaguard:DIR,device=cuda:1,b"`` -> ``["a", "llamaguard:DIR,device=cuda:1", "b"]``: a part
    that starts with ``key=`` is an option of the judge before it, any other part is a new judge."""
    specs: list[str] = []
    for part in (p.strip() for p in str(text or "").split(",")):
        if not part:
            continue
        if _OPTION.match(part) and specs:
            specs[-1] = f"{specs[-1]},{part}"
        else:
            specs.append(part)
    return specs


def judge_specs() -> list[str]:
    """The judges of this run, headline first (``$MMTOXICQA_JUDGE`` split at commas, else ``profanity``;
    ``key=value`` parts are options of the judge before them)."""
    specs = split_judge_list(settings.raw(JUDGE_ENV))
    if len(set(specs)) != len(specs):
        raise MMToxError(f"{JUDGE_ENV}={settings.raw(JUDGE_ENV)!r} names a judge twice; list each once")
    return specs or [DEFAULT_JUDGE]


def judge_spec() -> str:
    """The judges of this run as recorded in results: ``profanity`` or ``profanity,refusal``."""
    return ",".join(judge_specs())


def headline_judge() -> str:
    """The judge behind ``harmful_rate`` (the first one named)."""
    return judge_specs()[0]


def harmful_threshold() -> float:
    """The harmful threshold of this run (``$MMTOXICQA_THRESHOLD``, else 0.5), checked to lie in [0, 1]."""
    value = settings.text(THRESHOLD_ENV) or str(DEFAULT_THRESHOLD)
    try:
        threshold = float(value)
    except ValueError as exc:
        raise MMToxError(f"{THRESHOLD_ENV}={value!r} is not a number; use e.g. 0.5") from exc
    if not 0.0 <= threshold <= 1.0:
        raise MMToxError(f"{THRESHOLD_ENV}={value!r} must be within [0, 1]")
    return threshold
