"""One registry for everything that plugs in: methods, judges, attacks, task metrics and model sources.

Each plug-in is one file plus a decorator (the pattern of lm-evaluation-harness's
``lm_eval/api/registry.py``)::

    from mmtoxicqa.core.registry import register_judge

    @register_judge("my_judge")
    class MyJudge(Judge): ...

The registry imports nothing of the project's plug-ins itself (so no import cycles); on the
first lookup of a kind it imports that kind's home package, whose ``__init__`` imports the
built-in plug-in modules. A user's own plug-in module only has to be imported before use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmtoxicqa.core.errors import MMToxError

# kind -> the module whose import registers the built-in plug-ins of that kind
HOMES = {
    "method": "mmtoxicqa.methods",
    "judge": "mmtoxicqa.scoring",
    "attack": "mmtoxicqa.data.attacks",
    "metric": "mmtoxicqa.lmms.task_metrics",
    "model_source": "mmtoxicqa.modeling.sources",
}


@dataclass(frozen=True)
class Entry:
    """A registered plug-in: the object (builder, class or function) and what its decorator declared."""

    kind: str
    name: str
    obj: Any
    info: dict = field(default_factory=dict)


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in HOMES}


def _check_kind(kind: str) -> None:
    if kind not in HOMES:
        raise MMToxError(f"unknown plug-in kind {kind!r}; the registry holds {', '.join(HOMES)}")


def register(kind: str, name: str, **info) -> Callable[[Any], Any]:
    """Decorator: add the decorated object to ``kind`` under ``name`` (a name may be registered once)."""
    _check_kind(kind)

    def decorate(obj):
        known = _ENTRIES[kind].get(name)
        if known is not None and known.obj is not obj:
            raise MMToxError(f"{kind} {name!r} is registered twice ({_where(known.obj)} and {_where(obj)}); rename one of them")
        _ENTRIES[kind][name] = Entry(kind, name, obj, dict(info))
        return obj

    return decorate


def _where(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def register_method(name: str, **info):
    """A detoxification method: a builder ``(loaded, **options) -> Method`` (see mmtoxicqa.methods.base).
    ``slots=("...", ...)`` declares the slots its parts occupy, so a conflicting composition
    (``sgm+aura``) is refused before any builder runs (calibration included)."""
    return register("method", name, **info)


def register_judge(name: str, **info):
    """A judge class (subclass of mmtoxicqa.scoring.base.Judge). ``arg=`` names the constructor argument
    that the part after ':' in a spec fills (``detoxify:unbiased``); ``default_arg=`` its default;
    ``usage=`` the spec as shown in help texts."""
    return register("judge", name, **info)


def register_attack(name: str, **info):
    """An attack transform ``(request, variant) -> (question, image_text)``; ``templates=`` the number of phrasings."""
    return register("attack", name, **info)


def register_metric(name: str, **info):
    """A task metric: an aggregation over the task's per-item records; ``higher_is_better=`` as in the YAML."""
    return register("metric", name, **info)


def register_model_source(name: str, **info):
    """A model source: ``(name, rebuild=False) -> Path | None``, None for a ``pretrained=`` value that is not
    its own, else the (built once, cached) model folder. ``usage=`` the names it takes, for error messages."""
    return register("model_source", name, **info)


def _load_home(kind: str) -> None:
    importlib.import_module(HOMES[kind])


def entries(kind: str) -> dict[str, Entry]:
    """Every registered plug-in of ``kind``, by name, in registration order."""
    _check_kind(kind)
    _load_home(kind)
    return dict(_ENTRIES[kind])


def names(kind: str) -> list[str]:
    return sorted(entries(kind))


def lookup(kind: str, name: str) -> Entry:
    """The entry for ``name``; an unknown name is a one-line error listing the known ones."""
    found = entries(kind).get(name)
    if found is None:
        raise MMToxError(f"unknown {kind} {name!r}; known: {', '.join(names(kind))}")
    return found
