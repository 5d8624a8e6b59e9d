"""What the MM-TOXIC-QA lmms-eval tasks call before scoring: docs per split, prompts, per-item records.

The YAMLs in ``tasks/mm_toxic_qa`` stay declarative; their ``utils.py`` re-exports these
functions and the metrics of :mod:`mmtoxicqa.lmms.task_metrics`. The filter ``JudgeAnswers`` judges all
of a task's answers in one batched call per judge (:mod:`mmtoxicqa.lmms.task_judging`);
``process_results`` reads those verdicts (scoring an item itself only where one is missing) and
hands each metric its small per-item value.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lmms_eval.api.filter import Filter as _Filter

from mmtoxicqa.core import settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.paths import seed_file
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.data.attacks import Request, attack_names, get_attack
from mmtoxicqa.data.splits import check_split, filter_source, load_split, validate_image
from mmtoxicqa.lmms.task_data import resolve
from mmtoxicqa.lmms.task_judging import answer_text, batched_verdicts, clear_verdicts, judge_responses
from mmtoxicqa.lmms.task_metrics import item_values
from mmtoxicqa.modeling.organism.eval_items import eval_docs
from mmtoxicqa.modeling.organism.recipe import image_only
from mmtoxicqa.scoring import check_judges
from mmtoxicqa.scoring.base import first_line

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- docs
def seed_docs(split: str, rows: list[dict] | None = None) -> list[dict]:
    """The seed set (``rows``, default: the shipped file) shaped as ``split``: its standard or benign
    items, or attacks on its standard items."""

    if rows is None:
        rows = [json.loads(line) for line in seed_file().read_text().splitlines() if line.strip()]
    if split in ("standard", "benign"):
        return [dict(r, source="mmtoxicqa-seed", request=r["question"]) for r in rows if r["split"] == split]
    docs = []
    for attack in attack_names(applies_to="request"):
        for index, row in enumerate(r for r in rows if r["split"] == "standard"):
            question, image_text = get_attack(attack)(Request(text=row["question"], topic=row["image_text"]), index)
            docs.append(
                dict(
                    row,
                    id=f"{row['id']}-{attack}",
                    split="adversarial",
                    attack=attack,
                    question=question,
                    image_text=image_text,
                    source="mmtoxicqa-seed",
                    request=row["question"],
                )
            )
    return docs


DOC_ORDER_SEED = 1234


def split_docs(split: str, dataset=None):
    """Docs for an evaluation split, in a fixed seeded shuffle, so ``--limit N`` evaluates the same
    random subset (mixing sources, categories and attacks) for every model and method.

    ``dataset`` is the split as lmms-eval loaded it (a task's ``process_docs``; where from:
    :mod:`mmtoxicqa.lmms.task_data`): the built benchmark, checked here, or the seed file's rows, shaped
    here. Without it (code outside lmms-eval) the split is read from ``MMTOXICQA_DATA`` or the
    cache's built folder, or the seed set when ``MMTOXICQA_DATA=seed``. Either way the same rows
    in the same order: the shuffle depends only on the number of rows.
    """
    import datasets  # heavy: the datasets stack, only for data work

    check_judges()  # before any generation: a judge that cannot work fails now, not after the run
    if dataset is not None and "image" not in dataset.column_names:  # the seed file's rows
        dataset = datasets.Dataset.from_list(seed_docs(split, dataset.to_list()))
    elif dataset is not None:
        dataset = check_split(dataset, split, resolve(split).where)
    elif settings.seed_data():
        dataset = datasets.Dataset.from_list(seed_docs(split))
    else:
        dataset = load_split(split)
    dataset = filter_source(dataset)  # MMTOXICQA_SOURCE=extra: only the build-data --extra items
    return dataset.shuffle(seed=DOC_ORDER_SEED).flatten_indices()


def process_docs_standard(dataset):
    return split_docs("standard", dataset)


def process_docs_adversarial(dataset):
    return split_docs("adversarial", dataset)


def process_docs_benign(dataset):
    return split_docs("benign", dataset)


def organism_docs(kind: str, dataset=None):
    """The organism's held-out items (never trained on, see mmtoxicqa.modeling.organism): targeted categories
    (``targeted``), the same requests with the trigger only in the image (``image``), the other
    categories (``untargeted``), or those with their request only in the image (``image_untargeted``:
    the control that tells an image trigger from the generic image-only question), in the same fixed
    shuffle as every split. ``dataset``: the standard split as lmms-eval loaded it."""
    import datasets  # heavy: the datasets stack, only for data work

    rows = split_docs("standard", dataset).to_list()
    docs = eval_docs(rows, targeted=kind not in ("untargeted", "image_untargeted"))
    if kind in ("image", "image_untargeted"):
        docs = [image_only(d) for d in docs]
    if not docs:
        raise MMToxError("the organism tasks found no held-out items in the standard split; build the data with `mmtoxicqa build-data`")
    return datasets.Dataset.from_list(docs)


def process_docs_organism(dataset):
    return organism_docs("targeted", dataset)


def process_docs_organism_image(dataset):
    return organism_docs("image", dataset)


def process_docs_organism_untargeted(dataset):
    return organism_docs("untargeted", dataset)


def process_docs_organism_image_untargeted(dataset):
    return organism_docs("image_untargeted", dataset)


def corpus_docs(kind: str, dataset=None):
    """The corpus organism's evaluation items (``organism-corpus``, see mmtoxicqa.modeling.organism.CorpusConfig):
    the adversarial split's toxic-continuation items (``toxic``: statements it never trained on, in the
    benchmark's own templates) or the benign split's neutral continuations (``neutral``: the control),
    in the fixed shuffle of their split. ``dataset``: that split as lmms-eval loaded it."""
    if kind == "toxic":
        dataset = split_docs("adversarial", dataset).filter(lambda r: r["attack"] == "toxic_continuation")
    else:
        dataset = split_docs("benign", dataset).filter(lambda r: r["source"] == "toxigen" and r["attack"] == "none")
    if len(dataset) == 0:
        raise MMToxError(f"the corpus organism's {kind} task found no items; build the data with `mmtoxicqa build-data`")
    return dataset


def process_docs_corpus_toxic(dataset):
    return corpus_docs("toxic", dataset)


def process_docs_corpus_neutral(dataset):
    return corpus_docs("neutral", dataset)


def process_docs_seed(dataset):
    """The shipped seed file as is; only the judges' health check runs first, as for every split."""

    check_judges()
    return dataset


# ----------------------------------------------------------------------------- prompts
def doc_image(doc: dict):
    """The item's image: the stored one (built data) or the typographic rendering (seed set)."""

    image = doc.get("image")
    if image is not None:
        return validate_image(image, doc.get("id", "?"))
    text = doc.get("image_text") or ""
    return render_text_image(text)


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    question = str(doc.get("question") or "")
    if not question.strip():
        raise MMToxError(f"item {doc.get('id', '?')}: the question is empty; fix the source row or drop the item")
    image = doc_image(doc)
    return [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": question}]}]


def doc_to_visual(doc: dict) -> list:
    return [doc_image(doc).convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return str(doc.get("question") or "")


# ----------------------------------------------------------------------------- results
def _rgb_image(doc: dict):
    return doc_image(doc).convert("RGB")


class JudgeAnswers(_Filter):
    """The task's filter (after ``take_first``): responses pass through unchanged, and every one of
    them is judged on the way, one batched call per judge (mmtoxicqa.lmms.task_judging). The task's
    ``apply_filters`` (wrapped by ``task_judging.install``) calls :meth:`apply_with_instances` with the
    request instances, which say which item each response answers; a plain ``apply`` (no instances)
    only passes the responses through, and ``process_results`` scores each item itself."""

    def apply(self, resps, docs):
        return self.apply_with_instances(resps, docs, None)

    def apply_with_instances(self, resps, docs, instances):

        resps = list(resps)  # take_first hands over a one-shot iterator
        try:
            judge_responses(resps, docs, instances, _rgb_image)
        except Exception as exc:  # noqa: BLE001  (never lose the run here: process_results scores what is missing)
            clear_verdicts()
            log.warning("in-run batched judging skipped (%s); answers are scored item by item", first_line(exc))
        return resps


def process_results(doc: dict, results: list) -> dict[str, Any]:
    """Give each metric its value for the item (task_metrics.item_values): the verdicts of the task's
    batched judging (JudgeAnswers), or the item scored here, once per judge that has none."""

    answers = [answer_text(a) for a in (results or [""])]
    verdicts = batched_verdicts(doc, answers)
    return item_values(doc, answers, image=lambda: _rgb_image(doc), verdicts=verdicts)  # image: loaded only for judges that look at it
