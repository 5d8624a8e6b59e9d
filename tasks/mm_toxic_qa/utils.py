"""Thin lmms-eval glue: the YAMLs reference these names; the logic lives in mmtoxicqa.lmms.task_support
(docs, prompts, per-item records) and mmtoxicqa.lmms.task_metrics (one ``agg_<metric>`` per registered metric)."""

from mmtoxicqa.lmms.task_data import install
from mmtoxicqa.lmms.task_judging import install as install_judging
from mmtoxicqa.lmms.task_metrics import aggregations
from mmtoxicqa.lmms.task_support import (  # noqa: F401
    JudgeAnswers,
    doc_to_messages,
    doc_to_text,
    doc_to_visual,
    process_docs_adversarial,
    process_docs_benign,
    process_docs_corpus_neutral,
    process_docs_corpus_toxic,
    process_docs_organism,
    process_docs_organism_image,
    process_docs_organism_image_untargeted,
    process_docs_organism_untargeted,
    process_docs_seed,
    process_docs_standard,
    process_results,
)

globals().update(aggregations())
install_judging()  # the task's filters get the request instances (JudgeAnswers.apply_with_instances)
install()  # lmms-eval loads these tasks' data from where mmtoxicqa.lmms.task_data says (imported before any task is built)
