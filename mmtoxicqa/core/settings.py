"""Every environment variable the project reads is read here, and nowhere else.

Why one module: a user can see in one table what can be set from the environment, a default lives in one
place, and the architecture test can check that no other module reads ``os.environ`` behind this table's
back. Library code calls these functions when it needs a value (never at import time), so a variable set
after import still counts.
"""

from __future__ import annotations

import os

from mmtoxicqa.core.errors import MMToxError

# name -> what it sets. The README's "Environment variables" table lists the same names (tested).
VARIABLES: dict[str, str] = {
    "MMTOXICQA_CACHE": "root of every cache: converted models, built data, glasses (default ~/.cache/mmtoxicqa)",
    "MMTOXICQA_DATA": "the benchmark the tasks read: a built folder, a hub dataset id, or `seed`",
    "MMTOXICQA_SOURCE": "evaluate only the items of these sources (comma-separated; `extra` = build-data --extra)",
    "MMTOXICQA_SOURCES": "the public source data folder (default ../shared/data) for organism builds",
    "MMTOXICQA_JUDGE": "the judge list of a run (default profanity)",
    "MMTOXICQA_THRESHOLD": "score at or above which an answer counts as harmful (default 0.5)",
    "MMTOXICQA_FLUENCY_MODEL": "the reference LM for benign perplexity (`embedded`, a local path, or `none`)",
    "MMTOXICQA_BAD_WORDS": "the bad-words list of the bad_words decoding method",
    "MMTOXICQA_OCR_THREADS": "OCR worker threads of the reading model (default 1)",
    "MMTOXICQA_LLAMAGUARD_MODEL": "the llamaguard judge's model (default meta-llama/Llama-Guard-3-8B)",
    "MMTOXICQA_DETOXIFY_CHECKPOINT": "a local detoxify checkpoint file",
    "MMTOXICQA_DETOXIFY_CONFIG_DIR": "the local tokenizer/config folder for that checkpoint",
    "MMTOXICQA_LLM_JUDGE_URL": "the llm judge's OpenAI-compatible endpoint",
    "MMTOXICQA_LLM_JUDGE_MODEL": "the model name sent to that endpoint",
    "MMTOXICQA_LLM_JUDGE_API_KEY": "its API key (never logged)",
    "MMTOXICQA_LLM_JUDGE_TEMPLATE": "the llm judge's prompt template (a name or a file)",
    "MMTOXICQA_LLM_JUDGE_CONCURRENCY": "requests in flight (default 8)",
    "MMTOXICQA_LLM_JUDGE_TIMEOUT": "seconds per request",
    "MMTOXICQA_LLM_JUDGE_MAX_TOKENS": "max tokens of a verdict",
    "MMTOXICQA_LLM_JUDGE_CACHE": "`0` turns the on-disk verdict cache off",
    "PERSPECTIVE_API_KEY": "the Perspective API key (never logged)",
    "PERSPECTIVE_API_URL": "the Perspective endpoint (default Google's)",
    "PERSPECTIVE_QPS": "Perspective requests per second (default 1)",
    "PERSPECTIVE_LANGUAGES": "languages sent to Perspective (default en)",
    "WORLD_SIZE": "processes of a data-parallel launch (set by accelerate launch / torchrun; calibration runs once over them)",
    "LOCAL_RANK": "this process's GPU index on its machine (set by the launcher)",
    "HF_HUB_OFFLINE": "Hugging Face's own offline switch (read to word errors; `make` sets it to 1)",
    "TRANSFORMERS_OFFLINE": "transformers' offline switch (read like HF_HUB_OFFLINE)",
}

_TRUE = ("1", "true", "yes", "on")


def raw(name: str, default: str = "") -> str:
    """The variable's value as set (``default`` when unset). A name missing from :data:`VARIABLES` is a bug."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not declared in mmtoxicqa.core.settings.VARIABLES")
    return os.environ.get(name, default)


def text(name: str, default: str = "") -> str:
    """The value stripped of surrounding blanks; ``default`` when unset or blank."""
    return raw(name).strip() or default


def flag(name: str, default: bool = False) -> bool:
    """A yes/no variable: 1/true/yes/on (any case) is yes; unset or blank is ``default``."""
    value = raw(name).strip().lower()
    return value in _TRUE if value else default


def number(name: str, default, kind=int, minimum=1):
    """A numeric variable; unset or blank is ``default``; anything else that is not a number at least
    ``minimum`` is a one-line error naming the variable."""
    value_text = raw(name).strip()
    if not value_text:
        return default
    try:
        value = kind(value_text)
    except ValueError:
        raise MMToxError(f"{name}={value_text!r} is not a number; use e.g. {default}") from None
    if value < minimum:
        raise MMToxError(f"{name}={value_text!r} must be at least {minimum}")
    return value


def hub_offline() -> bool:
    """Whether the user switched the Hugging Face hub off (either variable)."""
    return flag("HF_HUB_OFFLINE") or flag("TRANSFORMERS_OFFLINE")


def data_setting() -> str | None:
    """``MMTOXICQA_DATA`` as set (a built folder, a hub dataset id, or ``seed``), None when unset or empty."""
    return text("MMTOXICQA_DATA") or None


def seed_data() -> bool:
    """Whether ``MMTOXICQA_DATA=seed`` asks for the shipped seed items."""
    return (data_setting() or "").lower() == "seed"
