"""Normalised-text hashing and the calibration/eval disjointness guarantee.

Calibration items (used to discover toxic neurons) must never be evaluation items,
or a method tuned on calibration data would be scored on its own training inputs.
Two texts count as the same item when their normalised forms are equal:
Unicode NFKC, lowercase, punctuation and symbols removed, whitespace collapsed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

EVAL_TEXT_FIELDS: tuple[str, ...] = ("request", "image_text", "question")
CALIBRATION_TEXT_FIELDS: tuple[str, ...] = ("request", "image_text")


def dedup_form(text: str) -> str:
    """The form two texts share when they count as duplicates: lowercase, no punctuation/symbols, collapse whitespace (``"Hi,  THERE!"`` -> ``"hi there"``)."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    kept = [" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text]
    return " ".join("".join(kept).split())


def text_hash(text: str) -> str:
    return hashlib.sha256(dedup_form(text).encode("utf-8")).hexdigest()


def _hashes(row: Mapping, fields: Sequence[str]) -> set[str]:
    out = set()
    for name in fields:
        value = row.get(name) or ""
        if dedup_form(value):
            out.add(text_hash(value))
    return out


def enforce_disjoint(calibration: list[dict], eval_rows: Iterable[Mapping]) -> tuple[list[dict], dict]:
    """Drop every calibration row whose request or image text equals (normalised) any text of an eval row.

    Eval texts are each eval row's request, image text and question; a calibration row
    collides if its request or image text hashes into that set. Returns the kept
    calibration rows (order preserved) and a report for the datasheet, whose ``passed``
    is re-checked on the kept rows.
    """
    eval_hashes: set[str] = set()
    for row in eval_rows:
        eval_hashes |= _hashes(row, EVAL_TEXT_FIELDS)
    kept, dropped = [], []
    for row in calibration:
        if _hashes(row, CALIBRATION_TEXT_FIELDS) & eval_hashes:
            dropped.append(row["id"])
        else:
            kept.append(row)
    remaining = sum(bool(_hashes(row, CALIBRATION_TEXT_FIELDS) & eval_hashes) for row in kept)
    report = {
        "method": "sha256 of normalised text (NFKC, lowercase, punctuation/symbols removed, whitespace collapsed); "
        "calibration request/image_text vs eval request/image_text/question",
        "eval_texts": len(eval_hashes),
        "calibration_checked": len(calibration),
        "dropped": len(dropped),
        "dropped_ids": sorted(dropped)[:50],
        "collisions_after_drop": remaining,
        "passed": remaining == 0,
    }
    return kept, report


def dedupe_rows(rows: list[dict], field: str = "request") -> tuple[list[dict], int]:
    """Keep the first row of each normalised ``field`` value; return (rows, number dropped)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        h = text_hash(row[field])
        if h in seen:
            continue
        seen.add(h)
        kept.append(row)
    return kept, len(rows) - len(kept)
