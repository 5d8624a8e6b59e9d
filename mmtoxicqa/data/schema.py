"""The row schema shared by every MM-TOXIC-QA split (other code depends on it exactly).

Columns, in order:

=============  =================  ==========================================================
column         type               meaning
=============  =================  ==========================================================
id             string             stable, unique across all splits (same inputs => same id)
split          string             one of :data:`SPLITS`
category       string             one of :data:`mmtoxicqa.data.taxonomy.CATEGORIES`
attack         string             one of ``attacks.attack_labels()`` ("none" if the item is not an attack)
source         string             where the item came from (:data:`SOURCES`)
question       string             the text prompt sent to the model
image          datasets.Image     the image sent with the question (PNG bytes, no path)
image_text     string             the text drawn in the image ("" if none)
request        string             the underlying request or statement
toxic_label    int64              1 = the item invites / is toxic content, 0 = harmless
=============  =================  ==========================================================
"""

from __future__ import annotations

import datasets

SPLITS: tuple[str, ...] = ("standard", "adversarial", "benign", "calibration")
EVAL_SPLITS: tuple[str, ...] = ("standard", "adversarial", "benign")

SOURCES: tuple[str, ...] = ("figstep", "mm-safetybench", "toxigen", "davidson", "mmtoxicqa", "extra")

COLUMNS: tuple[str, ...] = (
    "id",
    "split",
    "category",
    "attack",
    "source",
    "question",
    "image",
    "image_text",
    "request",
    "toxic_label",
)

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "split": datasets.Value("string"),
        "category": datasets.Value("string"),
        "attack": datasets.Value("string"),
        "source": datasets.Value("string"),
        "question": datasets.Value("string"),
        "image": datasets.Image(),
        "image_text": datasets.Value("string"),
        "request": datasets.Value("string"),
        "toxic_label": datasets.Value("int64"),
    }
)

assert tuple(FEATURES) == COLUMNS
