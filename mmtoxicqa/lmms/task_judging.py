"""In-run judging in one batched call per judge: every answer of a task is scored at once.

lmms-eval applies a task's filters to all of its responses before it calls ``process_results``
item by item. ``task_support.JudgeAnswers`` (the task YAML's filter, after ``take_first``) passes the
responses through unchanged and, on the way, scores them all with every judge of the run in
one call each, so an ``llm`` judge keeps its configured number of requests in flight and a model
judge (llamaguard, hf_classifier, detoxify) runs at its batch size. The verdicts are kept,
keyed by the item (id and judge context) and the answer, until the next task's filter runs;
``process_results`` reads them with :func:`batched_verdicts`.

lmms-eval 0.7.3 hands a filter the responses and the task's docs, not the request instances that
say which doc each response answers. :func:`install` (called by the task glue,
``tasks/mm_toxic_qa/utils.py``, as ``task_data.install`` is) wraps ``ConfigurableTask.apply_filters``:
a filter ensemble that holds a filter with ``apply_with_instances`` (``JudgeAnswers``) runs through
:func:`apply_ensemble`, which is lmms-eval's ``FilterEnsemble.apply`` with the task's instances passed
to that filter as an argument; every other ensemble, and every other task's filters, run as
lmms-eval runs them. Response i is instance i's (lmms-eval's filter contract keeps the order), and
its item is ``docs[instance.doc_id]``. Whatever cannot be lined up (the filter applied without
instances, e.g. by a bare ``FilterEnsemble.apply``), and every answer of a judge whose batched call
fails, is scored item by item in ``process_results`` as before: a failing judge leaves those answers
unscored (the run goes on, the answers are saved; ``mmtoxicqa rescore`` finishes the job).
"""

from __future__ import annotations

import json
import logging
import math
import threading

from mmtoxicqa.lmms.task_metrics import item_context
from mmtoxicqa.scoring import get_judge
from mmtoxicqa.scoring.base import first_line
from mmtoxicqa.scoring.settings import judge_specs

log = logging.getLogger(__name__)

# the doc fields a judge context reads (task_metrics.item_context), and the item id
CONTEXT_FIELDS = ("id", "question", "image_text", "request", "category", "attack", "toxic_label", "split")
IMAGE_CHUNK = 64  # images loaded at once for a judge that looks at them

_VERDICTS: dict[tuple[str, str, str], dict[str, tuple[float, str | None]]] = {}
_LOCK = threading.Lock()


def answer_text(response) -> str:
    """A model response as text (lmms-eval gives a string, or a ``GenerationResult`` with ``.text``)."""
    return "" if response is None else str(getattr(response, "text", response))


def verdict_key(doc: dict, answer: str) -> tuple[str, str, str]:
    """The key of one answer's verdicts: the item's id, what the judges know of it, and the answer."""
    return str(doc.get("id")), json.dumps(item_context(doc), sort_keys=True), answer


def batched_verdicts(doc: dict, answers: list[str]) -> dict[str, tuple[list[float], list[str | None]]]:
    """``{judge: (scores, reasons)}`` for the judges whose batched call scored every one of ``answers``
    for this item; a judge missing here scores the item itself (task_metrics.item_values)."""
    with _LOCK:
        found = [_VERDICTS.get(verdict_key(doc, a)) for a in answers]
    if not answers or any(f is None for f in found):
        return {}
    out = {}
    for spec in judge_specs():
        if all(spec in f for f in found):
            out[spec] = ([f[spec][0] for f in found], [f[spec][1] for f in found])
    return out


def clear_verdicts() -> None:
    with _LOCK:
        _VERDICTS.clear()


def score_batch(docs: list[dict], answers: list[str], image_of=None) -> dict[str, int]:
    """Score every ``(docs[i], answers[i])`` with every judge of the run, one batched call per judge,
    and keep the verdicts for :func:`batched_verdicts` (those of the previous task are dropped).
    ``image_of(i)`` gives item i's image, for judges that look at images. Returns, per judge, how
    many answers it scored in the batch (0 for a judge whose call failed: its items are scored one
    by one in ``process_results``, as a run without this filter would)."""

    contexts = [item_context(doc) for doc in docs]
    keys = [verdict_key(doc, a) for doc, a in zip(docs, answers)]
    verdicts: dict[tuple, dict] = {key: {} for key in keys}
    scored = {}
    for spec in judge_specs():
        try:
            judge = get_judge(spec)
            if not judge.uses_context:
                pairs = [judge.score_with_reasons(answers)]
            elif image_of is None or not getattr(judge, "sees_images", False):
                pairs = [judge.score_with_reasons(answers, contexts=contexts)]
            else:  # images loaded a chunk at a time, not a whole task's at once
                pairs = []
                for start in range(0, len(answers), IMAGE_CHUNK):
                    end = min(start + IMAGE_CHUNK, len(answers))
                    chunk = [{**contexts[i], "image": image_of(i)} for i in range(start, end)]
                    pairs.append(judge.score_with_reasons(answers[start:end], contexts=chunk))
        except Exception as exc:  # noqa: BLE001  (any judge failure: score item by item, keep the answers)
            log.error("judge %s failed on the task's batch (%s); its answers are scored item by item", spec, first_line(exc))
            scored[spec] = 0
            continue
        values = [v for scores, _ in pairs for v in scores]
        reasons = [r for _, why in pairs for r in why]
        for key, value, reason in zip(keys, values, reasons):
            verdicts[key][spec] = (value, reason)
        scored[spec] = sum(not math.isnan(v) for v in values)
    with _LOCK:
        _VERDICTS.clear()
        _VERDICTS.update(verdicts)
    return scored


def _doc_rows(docs, doc_ids: list[int]) -> list[dict]:
    """The judge-context fields of ``docs[i]`` for each id (a datasets.Dataset or a list of dicts)."""
    columns = getattr(docs, "column_names", None)
    if columns is not None:
        docs = docs.select_columns([c for c in CONTEXT_FIELDS if c in columns])
    return [dict(docs[i]) for i in doc_ids]


def _lined_up(instances, resps: list) -> bool:
    """True when ``instances`` are lmms-eval instances, one per response, each with an integer doc id."""
    if not isinstance(instances, list | tuple) or len(instances) != len(resps):
        return False
    return all(isinstance(getattr(inst, "doc_id", None), int) and not isinstance(inst.doc_id, bool) for inst in instances)


def judge_responses(resps: list, docs, instances, image_of_doc=None) -> dict[str, int] | None:
    """Judge every response a task filter received (one entry per request instance: a response, or
    the instance's list of them) against its item: ``resps[i]`` answers ``instances[i]``, whose item is
    ``docs[instances[i].doc_id]`` (the task's docs, indexed by doc id). ``image_of_doc(doc)`` gives an
    item's image for judges that look at images. Returns what :func:`score_batch` returns, or None
    (nothing kept) when there are no instances or they do not line up with the responses."""
    clear_verdicts()
    if docs is None or not resps or not _lined_up(instances, resps):
        log.warning("in-run batched judging: the responses could not be lined up with their items; scoring item by item")
        return None
    doc_ids = [inst.doc_id for inst in instances]
    rows = _doc_rows(docs, doc_ids)
    flat_docs, answers, where = [], [], []
    for doc_id, row, resp in zip(doc_ids, rows, resps):
        for answer in resp if isinstance(resp, list) else [resp]:
            flat_docs.append(row)
            answers.append(answer_text(answer).strip())  # as lmms-eval hands answers to process_results
            where.append(doc_id)
    image_of = (lambda i: image_of_doc(dict(docs[where[i]]))) if image_of_doc else None
    return score_batch(flat_docs, answers, image_of)


def takes_instances(ensemble) -> bool:
    """True when one of a FilterEnsemble's filters wants the request instances (``apply_with_instances``)."""
    return any(callable(getattr(f, "apply_with_instances", None)) for f in getattr(ensemble, "filters", ()))


def apply_ensemble(ensemble, instances: list, docs) -> None:
    """lmms-eval's ``FilterEnsemble.apply``, with ``instances`` handed explicitly to each filter that
    takes them (``f.apply_with_instances(resps, docs, instances)``); every other filter gets
    ``f.apply(resps, docs)`` as in lmms-eval. Each instance's result goes to ``filtered_resps[name]``."""
    resps = [inst.resps for inst in instances]
    for f in ensemble.filters:
        if callable(getattr(f, "apply_with_instances", None)):
            resps = f.apply_with_instances(resps, docs, instances)
        else:
            resps = f.apply(resps, docs)
    for inst, resp in zip(instances, resps):
        inst.filtered_resps[ensemble.name] = resp


def install() -> None:
    """Wrap lmms-eval's ``ConfigurableTask.apply_filters`` (idempotent): a task's filter ensembles that
    hold an instance-taking filter run through :func:`apply_ensemble`; a task without one runs
    lmms-eval's own method unchanged."""
    from lmms_eval.api.task import ConfigurableTask  # heavy: lmms-eval imports torch and its model registry

    original = ConfigurableTask.apply_filters
    if getattr(original, "_mmtoxicqa_judging", False):
        return

    def apply_filters(self):
        ensembles = getattr(self, "_filters", None)
        if not ensembles or not any(takes_instances(e) for e in ensembles):
            return original(self)
        for ensemble in ensembles:
            if takes_instances(ensemble):
                apply_ensemble(ensemble, self._instances, self.task_docs)
            else:
                ensemble.apply(self._instances, self.task_docs)
        return None

    apply_filters._mmtoxicqa_judging = True
    apply_filters.__wrapped__ = original
    apply_filters.__doc__ = original.__doc__
    ConfigurableTask.apply_filters = apply_filters
