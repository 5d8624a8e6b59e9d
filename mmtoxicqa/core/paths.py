"""Where the project keeps things on disk (all overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of everything mmtoxicqa caches: converted models, built data, glasses."""
    return Path(os.environ.get("MMTOXICQA_CACHE", Path.home() / ".cache" / "mmtoxicqa")).expanduser()


def data_setting() -> str | None:
    """``MMTOXICQA_DATA`` as set (a built folder, a hub dataset id, or ``seed``), None when unset or empty."""
    return os.environ.get("MMTOXICQA_DATA", "").strip() or None


def data_dir() -> Path:
    """Where the built MM-TOXIC-QA benchmark lives (``mmtoxicqa build-data --out``)."""
    env = data_setting()
    return Path(env).expanduser() if env else cache_dir() / "data"


def seed_file() -> Path:
    """The shipped seed items (inside the installed ``mmtoxicqa.tasks.mm_toxic_qa`` package)."""
    import mmtoxicqa.tasks.mm_toxic_qa as seed_pkg

    return Path(seed_pkg.__path__[0]) / "seed_items.jsonl"
