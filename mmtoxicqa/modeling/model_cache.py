"""The build-once model cache: a converted or fine-tuned model is built into ``$MMTOXICQA_CACHE/models``
once, atomically, and found again by the record file its build writes last.

Every built-in model source (the embedded model, the reading model, the organisms) goes through
:func:`built_once`, so a half-written folder is never used and a killed build is simply redone."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from mmtoxicqa.core.atomic import atomic_dir
from mmtoxicqa.core.paths import cache_dir

log = logging.getLogger(__name__)


def models_dir() -> Path:
    """Where built models live."""
    return cache_dir() / "models"


def built_once(target: Path, marker: str, build: Callable[[Path], dict], *, what: str, rebuild: bool = False) -> Path:
    """``target``, built by ``build(folder)`` when its ``marker`` record is missing (or ``rebuild``).

    ``build`` fills a temporary folder and returns the record; the record is written as ``marker``
    (indented JSON) and the folder renamed onto ``target`` only then."""
    if (target / marker).is_file() and not rebuild:
        return target
    log.warning("building %s once into %s", what, target)
    with atomic_dir(target) as tmp:
        record = build(tmp)
        (tmp / marker).write_text(json.dumps(record, indent=2) + "\n")
    return target
