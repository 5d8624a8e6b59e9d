"""The registered methods. Each builder returns a Method made of parts; see methods.base.

Method options arrive as lmms-eval model_args (``method=coca,coca_strength=0.5``); every
option is prefixed with its method's name so compositions never clash.
"""

from __future__ import annotations

import functools

from mmtoxicqa.core import settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.registry import register_method
from mmtoxicqa.methods.base import Method, Part, check_number
from mmtoxicqa.methods.controllers import ecso_controller
from mmtoxicqa.methods.decoding import RowExpansion, bad_words_processor, contrastive_combine, read_word_list, self_debias_combine
from mmtoxicqa.methods.prompting import (
    ADASHIELD_STATIC,
    SAFETY_PRINCIPLE,
    SELF_REMINDER_SUFFIX,
    SELF_REMINDER_SYSTEM,
    TOXIC_DESCRIPTIONS,
    with_system,
    with_user_suffix,
)
from mmtoxicqa.modeling.loading import LoadedModel


@register_method("safety_prompt", slots=("system prompt", "user suffix"))
def safety_prompt(loaded: LoadedModel) -> Method:
    """Self-reminder (Xie et al. 2023, Nature Machine Intelligence): a safety system prompt plus a
    reminder after the user's request."""
    return Method(
        "safety_prompt",
        loaded,
        [
            Part("prompt", functools.partial(with_system, text=SELF_REMINDER_SYSTEM), slot="system prompt", owner="safety_prompt"),
            Part("prompt", functools.partial(with_user_suffix, suffix=SELF_REMINDER_SUFFIX), slot="user suffix", owner="safety_prompt"),
        ],
    )


@register_method("adashield_s", slots=("user suffix",))
def adashield_s(loaded: LoadedModel) -> Method:
    """AdaShield-S (Wang et al. 2024, ECCV): a static defence prompt asking the model to inspect the
    image and text for harmful intent before answering."""
    return Method(
        "adashield_s",
        loaded,
        [Part("prompt", functools.partial(with_user_suffix, suffix=ADASHIELD_STATIC), slot="user suffix", owner="adashield_s")],
    )


@register_method("coca", slots=("contrastive rows",))
def coca(loaded: LoadedModel, coca_strength: float = 1.0) -> Method:
    """CoCA, constitutional calibration (Gao et al. 2024): logits + lambda * (logits with a safety
    principle in the prompt - logits without); both prompts run as rows of one batch."""
    strength = check_number("coca_strength", coca_strength, 0.0, None)
    if strength == 0:
        return Method("coca", loaded)
    expansion = RowExpansion(variants=[functools.partial(with_system, text=SAFETY_PRINCIPLE)], combine=contrastive_combine(strength))
    return Method("coca", loaded, [Part("rows", expansion, slot="contrastive rows", owner="coca")])


@register_method("self_debias", slots=("contrastive rows",))
def self_debias(loaded: LoadedModel, self_debias_strength: float = 50.0) -> Method:
    """Self-debiasing (Schick et al. 2021, TACL): tokens made more likely by a description of toxic
    text are decayed by exp(lambda * delta); all descriptions run as rows of one batch."""
    decay = check_number("self_debias_strength", self_debias_strength, 0.0, None)
    if decay == 0:
        return Method("self_debias", loaded)
    variants = [functools.partial(with_system, text=d) for d in TOXIC_DESCRIPTIONS]
    return Method(
        "self_debias",
        loaded,
        [Part("rows", RowExpansion(variants=variants, combine=self_debias_combine(decay)), slot="contrastive rows", owner="self_debias")],
    )


@register_method("bad_words", slots=("bad words",))
def bad_words(loaded: LoadedModel, bad_words_path: str | None = None) -> Method:
    """Word filtering at decoding time (as in Gehman et al. 2020's word-ban baseline): every
    tokenisation of each listed word is banned."""
    path = bad_words_path or settings.raw("MMTOXICQA_BAD_WORDS")
    if not path:
        raise MMToxError("method bad_words needs a word list: pass bad_words_path=FILE (or set MMTOXICQA_BAD_WORDS)")
    processor = bad_words_processor(loaded.tokenizer, read_word_list(path))
    return Method("bad_words", loaded, [Part("logits", lambda _loaded, _convs: processor, slot="bad words", owner="bad_words")])


@register_method("ecso", slots=("multi-pass controller",))
def ecso(loaded: LoadedModel) -> Method:
    """ECSO (Gou et al. 2024, ECCV): the model judges its own answer; if unsafe, it captions the
    image for the query and answers from the caption without the image."""
    return Method("ecso", loaded, [Part("controller", ecso_controller(), slot="multi-pass controller", owner="ecso")])
