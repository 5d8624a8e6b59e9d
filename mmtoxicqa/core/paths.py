"""Where the project keeps things on disk (the roots are overridable by environment variables)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mmtoxicqa.core import settings


def cache_dir() -> Path:
    """Root of everything mmtoxicqa caches: converted models, built data, glasses."""
    return Path(settings.raw("MMTOXICQA_CACHE") or Path.home() / ".cache" / "mmtoxicqa").expanduser()


def data_dir() -> Path:
    """Where the built MM-TOXIC-QA benchmark lives (``mmtoxicqa build-data --out``)."""
    env = settings.data_setting()
    return Path(env).expanduser() if env else cache_dir() / "data"


def tasks_dir() -> Path:
    """The installed lmms-eval task folder (``mmtoxicqa.tasks``, the repository's ``tasks/``).

    Located with ``find_spec``, which imports only the parent package: the bottom layer finds the
    task folder's files without importing the plug-in layer's code."""
    spec = importlib.util.find_spec("mmtoxicqa.tasks")
    return Path(next(iter(spec.submodule_search_locations)))


def seed_file() -> Path:
    """The shipped seed items (in the installed task folder)."""
    return tasks_dir() / "mm_toxic_qa" / "seed_items.jsonl"
