"""``mmtoxicqa sweep``: models x methods x tasks through lmms-eval's Python API, resumable.

Each cell records generation seconds per item (``s_per_item``) apart from the one-time work of
loading the model and setting up the method, calibration included (``one_time_s``, on the first
cell of each (model, method); 0 on the cells that reuse its wrapper).

Each (model, method, task) cell is written to its own JSON file atomically the moment
it finishes, so a sweep killed at any point (even SIGKILL) loses at most the cell in
flight; rerunning the same command skips every finished cell. One wrapper is loaded
per (model, method) and reused across its tasks.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import time
from pathlib import Path

from tqdm import tqdm

from mmtoxicqa.core import paths
from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.data.splits import data_fingerprint
from mmtoxicqa.lmms.task_metrics import item_context
from mmtoxicqa.methods import known_methods, method_options
from mmtoxicqa.model_wrappers.mmtox import MMTox
from mmtoxicqa.scoring.settings import harmful_threshold, headline_judge, judge_spec
from mmtoxicqa.study.results import item_outcomes, logged_doc, sample_answer, sample_id

log = logging.getLogger(__name__)
CELL_FORMAT = "mmtoxicqa-cell/1"
# Answer length of the MM-TOXIC-QA tasks: their YAML's default (tasks/mm_toxic_qa/_mm_toxic_qa_template.yaml, as
# lmms-eval's own safety_redteam task), and the one every cell computed before the length was recorded used.
ANSWER_TOKENS = 256
LEGACY_ANSWER_TOKENS = 64


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[-80:] or "default"


def legacy_cell_path(out: Path, model: str, method: str, task: str, tag: str = "") -> Path:
    """The name cells had before #28: readable but not unique (``org/m`` and ``org_m`` shared it)."""
    name = f"{_slug(method)}@{_slug(tag)}" if tag else _slug(method)
    return out / f"{_slug(model)}__{name}__{_slug(task)}.json"


def cell_key(model: str, method: str, task: str, tag: str = "") -> str:
    """12 hex digits of sha256 over the exact (model, method, task, tag): what makes a cell's name unique."""
    exact = json.dumps([model, method, task, tag or ""], ensure_ascii=False)
    return hashlib.sha256(exact.encode("utf-8")).hexdigest()[:12]


def cell_path(out: Path, model: str, method: str, task: str, tag: str = "") -> Path:
    """One file per cell: the readable name plus :func:`cell_key`, so cells whose names read alike
    (``org/m`` vs a folder ``org_m``, tag ``a=b`` vs ``a b``) never share a file."""
    legacy = legacy_cell_path(out, model, method, task, tag)
    return legacy.with_name(f"{legacy.stem}__{cell_key(model, method, task, tag)}.json")


def row_name(cell: dict) -> str:
    """How a cell's method is shown in tables: ``sgm`` or, for a tagged variant, ``sgm [top_k=2000]``."""
    return f"{cell['method']} [{cell['tag']}]" if cell.get("tag") else cell["method"]


def _options_for(method: str, extra: dict) -> dict:
    """--model-args apply to every cell: wrapper options always, method options only where accepted."""

    wrapper_options = set(inspect.signature(MMTox.__init__).parameters) - {"self", "method_kwargs"}
    accepted = method_options(method)
    unknown = [k for k in extra if k not in wrapper_options and not any(k in method_options(m) for m in _all_methods())]
    if unknown:
        raise MMToxError(f"--model-args: unknown option(s) {', '.join(unknown)}; see `mmtoxicqa sweep --help`")
    return {k: v for k, v in extra.items() if k in wrapper_options or k in accepted}


def _all_methods() -> list[str]:

    return known_methods()


def run_sweep(
    models: list[str],
    methods: list[str],
    tasks: list[str],
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 4,
    model_args: str = "",
    device: str | None = None,
    tag: str = "",
    max_new_tokens: int | None = None,
) -> list[Path]:
    """Run every missing cell; return the cell files (finished ones included).

    ``tag`` names a variant (say, the ``model_args`` that differ) so that several variants of one
    method can share an output folder and appear as separate leaderboard rows. ``max_new_tokens`` sets
    the answer length of the MM-TOXIC-QA tasks (default: theirs, :data:`ANSWER_TOKENS`); other tasks keep their own."""
    from lmms_eval.evaluator import simple_evaluate  # heavy: lmms-eval imports torch and its model registry
    from lmms_eval.tasks import TaskManager  # heavy: lmms-eval imports torch and its model registry

    extra = dict(kv.split("=", 1) for kv in model_args.split(",") if kv.strip()) if model_args else {}
    models = _models_with(models, extra.pop("pretrained", None))
    fingerprints = {seed: data_fingerprint(seed=seed) for seed in (False, True)}  # hashed once, not per cell
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(m, meth, t) for m in models for meth in methods for t in tasks]
    provenance = {"limit": limit, "model_args": model_args, "judge": judge_spec(), "threshold": harmful_threshold()}
    todo = []
    for c in cells:
        path = cell_path(out, *c, tag)
        adopt_legacy_cell(path, legacy_cell_path(out, *c, tag), identity(*c, tag))
        changed = stale_fields(
            path,
            {
                **provenance,
                **identity(*c, tag),
                "data": fingerprints[c[2] == "mm_toxic_qa_seed"],
                "max_new_tokens": answer_tokens(c[2], max_new_tokens),
            },
        )
        if changed is None:
            continue
        if changed:
            print(f"sweep: recomputing {path.name}: {', '.join(changed)} changed since it was computed")
        todo.append(c)
    done_before = len(cells) - len(todo)
    if done_before:
        print(f"sweep: {done_before}/{len(cells)} cells already finished in {out}; running the other {len(todo)}")
    task_manager = TaskManager("WARNING", include_path=str(paths.tasks_dir()))
    progress = tqdm(total=len(cells), initial=done_before, desc="sweep cells", unit="cell")
    current_key, wrapper = None, None
    for model, method, task in todo:
        one_time = 0.0  # charged to the first cell that loads (model, method); the others reuse the wrapper
        if (model, method) != current_key:
            wrapper = None
            pretrained = None if model in ("embedded", "") else model
            wrapper = MMTox(pretrained=pretrained, method=method, batch_size=batch_size, device=device, **_options_for(method, extra))
            current_key = (model, method)
            one_time = wrapper.one_time_seconds
        progress.set_postfix_str(f"{method} on {task}")
        start = time.perf_counter()
        gen_before, items_before = wrapper.generation_seconds, wrapper.generated_items
        length = answer_tokens(task, max_new_tokens)
        result = simple_evaluate(
            model=wrapper,
            tasks=[task],
            limit=limit,
            log_samples=True,
            task_manager=task_manager,
            verbosity="WARNING",
            bootstrap_iters=0,
            gen_kwargs=f"max_new_tokens={length}" if length is not None and max_new_tokens is not None else None,
        )
        wall = time.perf_counter() - start
        gen_seconds = wrapper.generation_seconds - gen_before
        gen_items = wrapper.generated_items - items_before
        if result is None or task not in result.get("results", {}):
            raise MMToxError(f"lmms-eval returned no result for {task} with {method} on {model}; rerun with --verbosity DEBUG")
        samples = result.get("samples", {}).get(task, [])
        n = len(samples) or result.get("n-samples", {}).get(task, {}).get("effective", 0)
        metrics = {k.split(",")[0]: v for k, v in result["results"][task].items() if k != "alias"}
        cell = {
            "format": CELL_FORMAT,
            "model": model,
            "method": method,
            "task": task,
            "limit": limit,
            "tag": tag,
            "model_args": model_args,
            "judge": judge_spec(),
            "threshold": harmful_threshold(),
            "data": fingerprints[task == "mm_toxic_qa_seed"],
            "max_new_tokens": length,
            "metrics": metrics,
            "n": n,
            "wall_time_s": round(wall, 3),
            "generation_s": round(gen_seconds, 3),
            "s_per_item": round(gen_seconds / gen_items, 4) if gen_items else None,
            "one_time_s": round(one_time, 3),
            "worn": wrapper.method.worn,  # the glasses actually worn (digest, dampened count, overrides)
            "items": _items_with_answers(samples, item_outcomes(samples, headline_judge(), harmful_threshold(), digits=6)),
            "lmms_eval_version": "0.7.3",
        }
        write_json_atomic(cell_path(out, model, method, task, tag), cell)
        progress.update(1)
    progress.close()
    return [cell_path(out, *c, tag) for c in cells]


def _models_with(models: list[str], pretrained: str | None) -> list[str]:
    """``--model-args pretrained=X`` names the model of every cell (as lmms-eval's --model_args does),
    in place of the default ``--models embedded``; giving both ways different models is an error."""
    if pretrained is None or models == [pretrained]:
        return models
    if models != ["embedded"]:
        raise MMToxError(f"--models {','.join(models)} and --model-args pretrained={pretrained} name different models; give the model once")
    return [pretrained]


PROVENANCE = ("limit", "model_args", "judge", "threshold", "data", "max_new_tokens")  # what a cell was computed from
IDENTITY = ("model", "method", "task", "tag")  # which cell it is


def identity(model: str, method: str, task: str, tag: str = "") -> dict:
    return {"model": model, "method": method, "task": task, "tag": tag or ""}


def _read_cell(path: Path) -> dict | None:
    try:
        cell = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cell if isinstance(cell, dict) else None


def adopt_legacy_cell(path: Path, legacy: Path, ident: dict) -> None:
    """A cell written under the pre-#28 name is renamed to its unique name when its content says it
    is this very cell (same model, method, task and tag); any other file there is left alone."""
    if path.exists() or not legacy.is_file():
        return
    cell = _read_cell(legacy)
    if cell is not None and cell.get("format") == CELL_FORMAT and all(_field(cell, k) == v for k, v in ident.items()):
        os.replace(legacy, path)


def answer_tokens(task: str, max_new_tokens: int | None = None) -> int | None:
    """The answer length a cell of ``task`` generates with: ``max_new_tokens`` or :data:`ANSWER_TOKENS` for
    the MM-TOXIC-QA tasks; None (the task's own setting, not recorded) for others."""
    if not task.startswith("mm_toxic_qa"):
        return None
    return ANSWER_TOKENS if max_new_tokens is None else int(max_new_tokens)


def _field(cell: dict, key: str):
    if key == "tag":
        return cell.get(key) or ""  # cells from before tags have no "tag"
    if key == "max_new_tokens" and key not in cell:  # cells from before the length was recorded used the YAML's 64
        return LEGACY_ANSWER_TOKENS if str(cell.get("task", "")).startswith("mm_toxic_qa") else None
    return cell.get(key)


def stale_fields(path: Path, provenance: dict) -> list[str] | None:
    """None when the finished cell at ``path`` was computed from exactly ``provenance`` (and, for the
    keys of :data:`IDENTITY` it gives, is that cell); else the fields that differ (empty list: no
    usable cell there). A cell from before provenance was recorded counts as changed ('data')."""
    if not path.is_file():
        return []
    cell = _read_cell(path)
    if cell is None:
        return ["unreadable file"]
    keys = [k for k in IDENTITY if k in provenance] + list(PROVENANCE)
    changed = [key for key in keys if _field(cell, key) != provenance.get(key)]
    return changed or None


def _items_with_answers(samples: list[dict], items: dict[str, dict]) -> dict[str, dict]:
    """The cell's per-item outcomes plus what ``rescore`` needs: the answer and its request."""

    for sample in samples:
        item = items.get(sample_id(sample))
        if item is not None:
            doc = logged_doc(sample, "the run's samples")
            item.update(answer=sample_answer(sample), **item_context(doc))  # the context holds the request
    return items


def text_free(cell: dict, keep: tuple[str, ...] = ()) -> dict:
    """A copy of ``cell`` whose items hold only numbers and flags, plus the ``keep`` labels (e.g.
    attack, category): answers, questions and requests come from the public sources or are the
    model's words about them, and committed results hold neither."""
    items = {
        item_id: {k: v for k, v in item.items() if k in keep or v is None or isinstance(v, (bool, int, float))}
        for item_id, item in (cell.get("items") or {}).items()
    }
    return dict(cell, items=items)


def load_cells_with_paths(results_dir: str | Path, unreadable: list[str] | None = None) -> list[tuple[Path, dict]]:
    """The cell files of a sweep folder (other JSON may share it); the names of files that are not
    valid JSON (e.g. cut by a full disk) are appended to ``unreadable`` when it is given."""
    cells = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            if unreadable is not None:
                unreadable.append(path.name)
            continue
        if isinstance(data, dict) and data.get("format") == CELL_FORMAT:  # other JSON (e.g. glasses.json) may share the folder
            cells.append((path, data))
    return cells


def load_cells(results_dir: str | Path) -> list[dict]:
    return [cell for _, cell in load_cells_with_paths(results_dir)]
