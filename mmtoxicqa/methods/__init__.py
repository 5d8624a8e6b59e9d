"""Detoxification methods: build one by name, or ``a+b`` to compose registered methods left to right.

Methods register themselves with ``@register_method`` (mmtoxicqa.core.registry); importing this
package imports the built-in ones (catalog: prompts and decoding; neurons: SGM and its
relatives; steering).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from mmtoxicqa.core import registry
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.registry import register_method
from mmtoxicqa.methods.base import Method, Part, compose
from mmtoxicqa.modeling.loading import LoadedModel

MethodBuilder = Callable[..., Method]


def _builders() -> dict[str, MethodBuilder]:
    return {name: entry.obj for name, entry in registry.entries("method").items()}


def known_methods() -> list[str]:
    return sorted(set(_builders()) | set(ALIASES))


@register_method("vanilla", slots=())
def vanilla(loaded: LoadedModel) -> Method:
    """The unmodified model: no parts."""
    return Method(name="vanilla", loaded=loaded)


def _accepted(builder: MethodBuilder) -> set[str]:
    params = inspect.signature(builder).parameters
    return {name for name, p in params.items() if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and name != "loaded")}


# Named compositions. sgm_star is SGM plus the complementary defence that measured best
# on the embedded model (see results/README.md for the measurement).
ALIASES = {"sgm_star": "sgm+coca"}


def method_options(spec: str) -> set[str]:
    """Every option name the methods in ``spec`` accept (aliases and '+' compositions expanded)."""
    names = [m for n in str(spec).split("+") if n.strip() for m in ALIASES.get(n.strip(), n.strip()).split("+")]
    builders = _builders()
    return set().union(*(_accepted(builders[n]) for n in names if n in builders)) if names else set()


# What the method most recently built in this process wears (for the run's results JSON): its name and
# ``worn`` record only, so no reference to the model outlives the wrapper that loaded it.
_LAST_BUILT: dict = {}


def last_built() -> dict | None:
    """``{"name", "worn"}`` of the method most recently built in this process, or None."""
    return dict(_LAST_BUILT) if _LAST_BUILT else None


def forget_last_built() -> None:
    _LAST_BUILT.clear()


def build_method(spec: str, loaded: LoadedModel, **kwargs) -> Method:
    """Build ``spec`` (a name or ``a+b+...``); each option goes to the builders that accept it."""
    method = _build(spec, loaded, **kwargs)
    _LAST_BUILT.clear()
    _LAST_BUILT.update(name=method.name, worn=method.worn)
    return method


def check_method(spec: str, options=(), also_accepted=()) -> list[str]:
    """The method names ``spec`` expands to, after refusing an unknown method, a method named twice,
    an option no method in it (nor ``also_accepted``, e.g. the loading options) takes, or two methods
    in one slot. No model is needed: callers check before loading one."""
    names = [n.strip() for n in str(spec).split("+") if n.strip()]
    names = [m for n in names for m in ALIASES.get(n, n).split("+")]
    builders = _builders()
    unknown = [n for n in names if n not in builders]
    if not names or unknown:
        raise MMToxError(f"unknown method {', '.join(unknown) or spec!r}; known methods: {', '.join(known_methods())} (compose with '+')")
    if len(set(names)) != len(names):
        raise MMToxError(f"method={spec} names a method twice; list each once")
    accepted = set().union(*(_accepted(builders[n]) for n in names))
    unused = set(options) - accepted - set(also_accepted)
    if unused:
        listed = sorted(accepted | set(also_accepted))
        raise MMToxError(f"unknown option(s) {', '.join(sorted(unused))} for method={spec}; accepted: {', '.join(listed) or 'none'}")
    check_slots(spec, names, declared_slots(names))  # before any builder runs: a conflict never costs a calibration
    return names


def _build(spec: str, loaded: LoadedModel, **kwargs) -> Method:
    alias = ALIASES.get(str(spec).strip())
    if alias:
        method = _build(alias, loaded, **kwargs)
        method.name = str(spec).strip()
        return method
    names = check_method(spec, kwargs)
    builders = _builders()
    accepted = {n: _accepted(builders[n]) for n in names}
    declared = declared_slots(names)
    methods = [builders[n](loaded, **{k: v for k, v in kwargs.items() if k in accepted[n]}) for n in names]
    for name, method in zip(names, methods):
        undeclared = sorted({p.slot for p in method.parts} - set(declared[name] or ()))
        if declared[name] is not None and undeclared:
            raise MMToxError(
                f"method {name!r} built parts in slot(s) {', '.join(undeclared)} that its register_method(..., slots=...) "
                "does not declare; add them to the declaration"
            )
    if len(methods) == 1:
        return methods[0]
    return compose("+".join(names), methods)


def declared_slots(names) -> dict[str, tuple[str, ...] | None]:
    """The slots each method declares with ``register_method(name, slots=(...))`` (None: not declared)."""
    entries = registry.entries("method")
    return {n: (tuple(entries[n].info["slots"]) if "slots" in entries[n].info else None) for n in names}


def check_slots(spec: str, names, declared: dict) -> None:
    """Refuse a composition whose methods declare the same slot (the dry run of ``compose``'s check)."""
    taken: dict[str, str] = {}
    for name in names:
        for slot in declared.get(name) or ():
            if slot in taken:
                raise MMToxError(f"cannot compose {taken[slot]!r} with {name!r}: both set the {slot}; drop one of them from method={spec}")
            taken[slot] = name


from mmtoxicqa.methods import catalog as _catalog  # noqa: E402,F401  (registers the methods)
from mmtoxicqa.methods import neurons as _neurons  # noqa: E402,F401
from mmtoxicqa.methods import steering as _steering  # noqa: E402,F401

__all__ = [
    "Method",
    "Part",
    "build_method",
    "check_method",
    "compose",
    "forget_last_built",
    "known_methods",
    "last_built",
    "register_method",
]
