"""A detoxification method is a composition of four kinds of parts.

* prompt transforms: rewrite the conversation before it reaches the model
  (system prompts, prefixes, image-side instructions);
* interventions: context managers that change the model while it runs
  (forward hooks on neurons, steering vectors) and undo themselves on exit;
* logits processors: decoding-time edits of next-token scores;
* a controller: at most one multi-pass loop (generate, judge, regenerate).

Generation order is fixed and documented: prompt transforms apply in the order the
methods were composed, then every intervention is entered (same order), then the
controller (or a single pass) generates with all logits processors chained.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.methods.decoding import GroupedChoice
from mmtoxicqa.modeling.loading import Conversation, LoadedModel, generate, generation_settings

PromptTransform = Callable[[Conversation], Conversation]
Intervention = Callable[[], AbstractContextManager]  # a fresh context manager per generate() call
LogitsProcessorFactory = Callable[[LoadedModel, Sequence[Conversation]], object]


@dataclass
class Part:
    """One component of a method; ``slot`` names what it occupies for conflict checks."""

    kind: str  # "prompt" | "intervention" | "logits" | "rows" (extra contrastive rows) | "controller"
    fn: Callable
    slot: str  # two parts with the same slot cannot be composed (e.g. two system prompts)
    owner: str = ""


@dataclass
class Method:
    name: str
    loaded: LoadedModel
    parts: list[Part] = field(default_factory=list)
    # What the method wears, by owner (e.g. {"sgm": Glasses.worn_record()}): the run's results JSON
    # and sweep cells record it so two runs that wore the same neurons can be told apart.
    worn: dict = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Part]:
        return [p for p in self.parts if p.kind == kind]

    def transform(self, conversation: Conversation) -> Conversation:
        for part in self.of_kind("prompt"):
            conversation = part.fn(conversation)
        return conversation

    def generate_once(self, conversations: Sequence[Conversation], gen_kwargs: dict | None) -> list[str]:
        """One batched generation pass with interventions active and logits processors chained.

        With a row expansion (CoCA, self-debiasing) the variants run as extra rows of the
        same batch and a GroupedChoice processor picks each token (see methods.decoding).
        """
        processors = [part.fn(self.loaded, conversations) for part in self.of_kind("logits")]
        expansions = self.of_kind("rows")
        rows = list(conversations)
        if expansions:
            expansion = expansions[0].fn
            for variant in expansion.variants:
                rows += [variant(c) for c in conversations]
            settings, _ = generation_settings(gen_kwargs)
            chooser = GroupedChoice(
                len(conversations),
                expansion,
                processors,
                do_sample=settings["do_sample"],
                temperature=settings.get("temperature", 1.0),
                top_p=settings.get("top_p"),
            )
            gen_kwargs = {k: v for k, v in (gen_kwargs or {}).items() if k not in ("temperature", "do_sample", "top_p")}
            processors = [chooser]
        with contextlib.ExitStack() as stack:
            for part in self.of_kind("intervention"):
                stack.enter_context(part.fn())
            answers = generate(self.loaded, rows, gen_kwargs, logits_processor=processors or None)
        return answers[: len(conversations)]

    def generate(self, conversations: Sequence[Conversation], gen_kwargs: dict | None = None) -> list[str]:
        conversations = [self.transform(c) for c in conversations]
        controllers = self.of_kind("controller")
        if controllers:
            return controllers[0].fn(self, conversations, gen_kwargs)
        return self.generate_once(conversations, gen_kwargs)


def compose(name: str, methods: Sequence[Method]) -> Method:
    """Combine methods' parts in order; refuse parts that claim the same slot."""
    if not methods:
        raise MMToxError("compose() needs at least one method")
    taken: dict[str, str] = {}
    parts: list[Part] = []
    worn: dict = {}
    for method in methods:
        worn.update(method.worn)
        for part in method.parts:
            if part.slot in taken:
                raise MMToxError(
                    f"cannot compose {taken[part.slot]!r} with {method.name!r}: both set the {part.slot}; drop one of them from method={name}"
                )
            taken[part.slot] = method.name
            parts.append(part)
    return Method(name=name, loaded=methods[0].loaded, parts=parts, worn=worn)


def check_count(name: str, value, low: int = 0, allow_none: bool = False) -> int | None:
    """``value`` as an integer >= ``low`` (None when ``allow_none`` and it is None/''/'None'), else a one-line error."""
    if allow_none and value in (None, "", "None", "none"):
        return None
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < low:
        omit = " (or omit it)" if allow_none else ""
        raise MMToxError(f"{name}={value!r} is not usable; it must be an integer >= {low}{omit}")
    return number


def check_number(name: str, value, low: float = 0.0, high: float | None = 1.0) -> float:
    """``value`` as a float within [low, high] (no upper bound when high is None), else a one-line error."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise MMToxError(f"{name}={value!r} is not a number") from exc
    if math.isnan(number) or number < low or (high is not None and number > high):
        bound = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise MMToxError(f"{name}={value!r} is out of range; it must be {bound}")
    return number
