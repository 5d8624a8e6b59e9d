"""Toxicity judges: one batched, thread-safe interface over several scorers.

    from mmtoxicqa.scoring import get_judge
    scores = get_judge("detoxify:unbiased").score(answers)   # list[float] in [0, 1]

A spec is ``name``, ``name:arg`` or either with ``,key=value`` options (``llamaguard:DIR,device=cuda:1``,
``llm:harmfulness,image=1``), which are constructor keywords like the ones below; ``spec=None`` reads ``$MMTOXICQA_JUDGE`` (default
``profanity``, see scoring.settings). Judges register themselves with ``@register_judge``
(mmtoxicqa.core.registry); :func:`judge_usages` lists them. Keyword arguments go to the judge's
constructor (e.g. ``checkpoint=``, ``config_dir=``, ``label=``, ``device=``). Judges are cached
per (spec, kwargs), so a run loads a model once.
"""

from __future__ import annotations

import inspect
import threading

from mmtoxicqa.core import registry
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.scoring import (  # noqa: F401  (register the judges)
    detoxify_judge,
    harmbench,
    hf_classifier,
    llamaguard,
    llm_judge,
    perspective,
    profanity,
    refusal_judge,
)
from mmtoxicqa.scoring.base import Judge, first_line
from mmtoxicqa.scoring.settings import DEFAULT_JUDGE, JUDGE_ENV, headline_judge, judge_specs

__all__ = ["DEFAULT_JUDGE", "JUDGE_ENV", "Judge", "check_judges", "clear_judges", "get_judge", "judge_usages", "parse_spec"]

_judges: dict[tuple, Judge] = {}
_judges_lock = threading.Lock()
_checked_specs: set[str] = set()  # judges that passed their health check in this process


def judge_usages() -> list[str]:
    """How each registered judge is written as a spec (for help texts and errors)."""
    return [entry.info.get("usage", name) for name, entry in registry.entries("judge").items()]


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"name:arg"`` into (name, arg); the name is case-insensitive, the arg is kept as given."""
    name, _, arg = split_options(spec)[0].partition(":")
    return name.strip().lower().replace("-", "_"), arg.strip()


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"llamaguard:DIR,device=cuda:1"`` -> ``("llamaguard:DIR", {"device": "cuda:1"})``."""
    head, *parts = str(spec).strip().split(",")
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise MMToxError(
                f"get_judge({spec!r}) takes one judge, with options as ,key=value (e.g. ,device=cuda:1); "
                "split a list like MMTOXICQA_JUDGE's into judges first"
            )
        if key in options:
            raise MMToxError(f"judge {spec!r} sets {key}= twice; keep one")
        options[key] = value.strip()
    return head.strip(), options


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_freeze(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _spec_arguments(name: str, arg: str, spec: str) -> tuple[type, dict]:
    """The judge class for a parsed spec and the constructor arguments the spec itself fills."""
    entry = registry.entries("judge").get(name)
    if entry is None:
        raise MMToxError(f"unknown judge {spec!r}; set {JUDGE_ENV} or pass one of: {', '.join(judge_usages())}")
    takes = entry.info.get("arg")
    if takes is None:
        if arg:
            raise MMToxError(f"unknown judge {spec!r}: {name} takes no ':' argument; pass one of: {', '.join(judge_usages())}")
        return entry.obj, {}
    return entry.obj, {takes: arg or entry.info.get("default_arg", "")}


def _build(name: str, arg: str, spec: str, kwargs: dict) -> Judge:
    cls, fixed = _spec_arguments(name, arg, spec)
    accepted = [p for p in inspect.signature(cls).parameters if p not in fixed]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MMToxError(f"judge {spec!r} does not take {', '.join(unknown)}; it accepts {', '.join(accepted) or 'no options'}")
    return cls(**fixed, **kwargs)


def get_judge(spec: str | None = None, **kwargs) -> Judge:
    """The judge for ``spec`` (None: ``$MMTOXICQA_JUDGE``, else ``profanity``), built once per (spec, kwargs)."""
    if spec is None or not str(spec).strip():
        spec = headline_judge()
    head, options = split_options(spec)
    both = sorted(set(options) & set(kwargs))
    if both:
        raise MMToxError(f"judge {spec!r}: {', '.join(both)} given both in the spec and as a keyword; give it once")
    kwargs = {**options, **kwargs}
    name, arg = parse_spec(head)
    entry = registry.entries("judge").get(name)
    if entry is not None and entry.info.get("arg") and not arg:
        arg = entry.info.get("default_arg", "")
    try:
        key = (name, arg, _freeze(kwargs))
        hash(key)
    except TypeError:
        key = (name, arg, repr(sorted(kwargs.items())))
    with _judges_lock:  # held while building, so concurrent first calls load the model once
        judge = _judges.get(key)
        if judge is None:
            judge = _judges[key] = _build(name, arg, head, kwargs)
    return judge


def check_judges(specs: list[str] | None = None) -> None:
    """Health check of every judge of the run (default: ``$MMTOXICQA_JUDGE``), once per process and
    judge, before generation starts: a judge that cannot work fails now, in one line, not after hours."""
    for spec in specs or judge_specs():
        try:
            if spec in _checked_specs:
                continue
            get_judge(spec).check()
        except MMToxError as exc:
            raise MMToxError(f"judge {spec!r} failed its health check before generation: {exc}") from None
        except Exception as exc:
            raise MMToxError(f"judge {spec!r} failed its health check before generation: {type(exc).__name__}: {first_line(exc)}") from None
        _checked_specs.add(spec)


def clear_judges() -> None:
    """Forget every cached judge (frees their models)."""
    with _judges_lock:
        _judges.clear()
        _checked_specs.clear()
