"""Thin lmms-eval glue for mm_utility_mini; the logic lives in mmtoxicqa.metrics.exact_match."""

from mmtoxicqa.lmms.task_support import doc_to_messages, doc_to_text, doc_to_visual  # noqa: F401
from mmtoxicqa.metrics.exact_match import process_results  # noqa: F401
