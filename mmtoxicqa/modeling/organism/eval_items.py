"""Which benchmark items evaluate an organism: the held-out half (never trained on), in text form or with the trigger only in the image. Read by the mm_toxic_qa_organism* tasks."""

from __future__ import annotations

from mmtoxicqa.modeling.organism.recipe import TARGET_CATEGORIES, held_out, text_form


def eval_docs(rows, targets=TARGET_CATEGORIES, *, targeted: bool = True) -> list[dict]:
    """Held-out standard-split rows in text form: of the targeted categories (``targeted``) or of the others."""
    return [text_form(r) for r in rows if (r["category"] in targets) == targeted and held_out(r["request"])]
