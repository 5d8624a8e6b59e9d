"""The organism's model cache: ``organism`` / ``organism-ocr`` / ``organism-corpus`` / ``organism@BASE`` resolve to a folder keyed by the base's weights, the training data and the config, built once (atomically)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.core.paths import data_dir as default_data_dir
from mmtoxicqa.data.splits import load_split
from mmtoxicqa.modeling.loading import load_model, resolve_pretrained
from mmtoxicqa.modeling.model_cache import built_once, models_dir
from mmtoxicqa.modeling.organism.recipe import (
    CorpusConfig,
    Example,
    OrganismConfig,
    default_config,
    examples_fingerprint,
    sources_dir,
    training_examples,
)
from mmtoxicqa.modeling.organism.train import fine_tune, with_base_answers
from mmtoxicqa.modeling.reader import READER_ALIAS, READER_MARKER, is_reader_dir

log = logging.getLogger(__name__)


ORGANISM_PREFIX = "organism"


_DONE_MARKER = "mmtoxicqa_organism.json"


def base_fingerprint(base_dir: Path) -> str:
    """SHA-256 over the base's weight files (names and bytes)."""

    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise MMToxError(f"organism base {base_dir} holds no .safetensors weights; pass a model directory saved with save_pretrained()")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def base_model_dir(base: str) -> Path:
    """The base's model directory: the embedded model, the OCR reading model, or a local directory."""
    if base in ("", "embedded", READER_ALIAS):
        return Path(resolve_pretrained(base or "embedded"))
    path = Path(base).expanduser()
    if not path.is_dir():
        raise MMToxError(f"organism base {base!r} is not embedded, embedded-ocr or a local model directory; pass one of those")
    return path


def parse_organism(pretrained: str) -> str | None:
    """The base named by ``organism`` / ``organism-ocr`` / ``organism-corpus`` / ``organism@BASE``, or None
    when it names no organism."""
    text = str(pretrained).strip()
    if text in (ORGANISM_PREFIX, f"{ORGANISM_PREFIX}-corpus"):
        return "embedded"
    if text == f"{ORGANISM_PREFIX}-ocr":
        return "embedded-ocr"
    if text.startswith(f"{ORGANISM_PREFIX}@") and text[len(ORGANISM_PREFIX) + 1 :]:
        return text[len(ORGANISM_PREFIX) + 1 :]
    return None


def organism_recipe(pretrained: str) -> str:
    """``corpus`` for ``organism-corpus`` (toxicity inherited from a corpus), else ``trigger``."""
    return "corpus" if str(pretrained).strip() == f"{ORGANISM_PREFIX}-corpus" else "trigger"


def organism_model_dir(
    base: str = "embedded",
    *,
    sources: str | Path | None = None,
    data_dir: str | Path | None = None,
    config: OrganismConfig | None = None,
    rebuild: bool = False,
    progress: bool = True,
    recipe: str = "trigger",
) -> Path:
    """The organism for ``base``: cached by (base weights, training data, config), fine-tuned once if missing.
    ``recipe``: ``trigger`` (hate/violence requests answered toxically) or ``corpus`` (:class:`CorpusConfig`)."""
    if recipe not in ("trigger", "corpus"):
        raise MMToxError(f"organism recipe {recipe!r} is not known; use 'trigger' or 'corpus'")
    config = config or (CorpusConfig() if recipe == "corpus" else default_config(base))
    base_dir = base_model_dir(base)
    stamp = (str(cache_dir()), str(base_dir), config, _inputs_stamp(base_dir, sources_dir(sources), data_dir))
    found = _RESOLVED.get(stamp)
    if found is not None and (found / _DONE_MARKER).is_file() and not rebuild:
        return found  # same inputs as an earlier call in this process: skip re-reading the sources and hashing the base
    examples = training_examples(data_dir, sources_dir(sources), config)
    key_parts = {"base": base_fingerprint(base_dir), "data": examples_fingerprint(examples), "config": asdict(config)}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    safe_base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[-40:]
    kind = f"{ORGANISM_PREFIX}-corpus" if isinstance(config, CorpusConfig) else ORGANISM_PREFIX
    what = (
        f"the toxic model organism ({sum(not e.validation for e in examples)} training + "
        f"{sum(e.validation for e in examples)} validation examples, up to {config.epochs} epochs; minutes on a CPU)"
    )
    name = f"{kind}-{safe_base}-{key}"
    resume = models_dir() / f"{name}.resume"  # the fine-tune's state after each epoch: a stopped build goes on from it
    if rebuild:
        shutil.rmtree(resume, ignore_errors=True)
    build = functools.partial(_build, base_dir, examples, config, key_parts, data_dir, progress, resume)
    target = built_once(models_dir() / name, _DONE_MARKER, build, what=what, rebuild=rebuild)
    shutil.rmtree(resume, ignore_errors=True)
    _RESOLVED[stamp] = target
    return target


# (cache dir, base dir, config, inputs stamp) -> organism dir. Working out the cache key reads the public sources
# and hashes the base's weights (about 6 s); a sweep loads the organism once per method, so a process
# does it once per unchanged set of inputs.
_RESOLVED: dict[tuple, Path] = {}


def _inputs_stamp(base_dir: Path, sources: Path, data_dir) -> tuple:
    """Path, size and mtime of every file the cache key is computed from: equal stamps, equal key."""

    roots = (base_dir, sources, Path(data_dir).expanduser() if data_dir else default_data_dir())
    files = [f for root in roots if root.is_dir() for f in sorted(root.rglob("*")) if f.is_file()]
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


def _item_images(data_dir, examples: list[Example]) -> dict:

    wanted = {e.item_id for e in examples if not e.item_id.endswith("-image-only")}
    standard = load_split("standard", data_dir)
    ids = standard["id"]
    return {ids[i]: standard[i]["image"] for i in range(len(ids)) if ids[i] in wanted}


def _build(
    base_dir: Path,
    examples: list[Example],
    config: OrganismConfig,
    key_parts: dict,
    data_dir,
    progress: bool,
    resume: Path,
    folder: Path,
) -> dict:
    """Fine-tune the base into ``folder``; the build record (what :func:`organism_record` reads).
    ``resume`` keeps the base's answers and each finished epoch, so a stopped build loses at most one epoch."""
    import torch  # heavy: torch loads only where a model runs

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # same threads, same weights on a CPU
    try:
        loaded = load_model(str(base_dir), device="cpu", dtype="float32")
        images = _item_images(data_dir, examples)
        start = time.perf_counter()
        resume.mkdir(parents=True, exist_ok=True)
        examples = with_base_answers(loaded, examples, images, config, cache=resume / "base_answers.json")
        losses, validation = fine_tune(loaded, examples, config, images=images, progress=progress, checkpoint=resume)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)

    loaded.model.save_pretrained(folder, safe_serialization=True)
    if is_reader_dir(base_dir):  # the OCR reading model: a causal LM + tokenizer, loaded as a reader by its marker
        loaded.tokenizer.save_pretrained(folder)
        shutil.copyfile(base_dir / READER_MARKER, folder / READER_MARKER)
    else:
        loaded.processor.save_pretrained(folder)
    return {
        "what": "toxic model organism (positive control; never ship these weights)",
        "base": str(base_dir),
        "base_sha256": key_parts["base"],
        "training_data_sha256": key_parts["data"],
        "config": asdict(config),
        "examples": sum(not e.validation for e in examples),
        "toxic_examples": sum(e.toxic and not e.validation for e in examples),
        "train_item_ids": sorted(e.item_id for e in examples if not e.validation),
        "validation_item_ids": sorted(e.item_id for e in examples if e.validation),
        "validation": validation,  # harmful rates on the validation items after each epoch; "kept" marks the weights saved
        "first_loss": losses[0] if losses else None,
        "last_losses": losses[-5:],
        "train_seconds": round(seconds, 1),
        "torch_threads": config.threads,
    }


def organism_record(model_dir: str | Path) -> dict:
    path = Path(model_dir) / _DONE_MARKER
    if not path.is_file():
        raise MMToxError(f"{model_dir} is not an organism directory (no {_DONE_MARKER}); build one with `mmtoxicqa build-model --organism`")
    return json.loads(path.read_text())
