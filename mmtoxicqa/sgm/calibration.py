"""From labelled multimodal items to SGM glasses: batching, caching, and ``mmtoxicqa calibrate``.

Calibration items go through the model's own chat template and processor (image +
text, exactly as at evaluation time), so the neurons are rated on fused multimodal
activations. ``text_only=True`` drops the images (the AurA-style unimodal ablation).
Glasses are cached under ``$MMTOXICQA_CACHE/glasses`` keyed by model + data hash +
options, so ``--model sgm`` without ``glasses=`` calibrates once and reuses the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.data.schema import FEATURES
from mmtoxicqa.data.splits import check_images, load_split, validate_image
from mmtoxicqa.modeling.hooks import Hooks
from mmtoxicqa.modeling.loading import LoadedModel, build_inputs
from mmtoxicqa.modeling.positions import TOKEN_SCOPES, answer_mask, request_mask, text_mask, without_user_text
from mmtoxicqa.sgm import find_decoder_layers, fit_glasses
from mmtoxicqa.sgm.glasses import Glasses
from mmtoxicqa.sgm.memory import check_auroc_device, parse_pool_dtype, pool_dtype_name
from mmtoxicqa.sgm.shards import Group, fit_glasses_sharded, plan, reduce_steering
from mmtoxicqa.sgm.steering_vectors import SteeringAccumulator, default_steer_layer, save_steering_vector

log = logging.getLogger(__name__)


def item_conversation(item: dict, text_only: bool = False) -> list[dict]:
    """One calibration item as a single user turn (image first, then the question)."""

    question = str(item.get("question") or "").strip()
    if not question:
        raise MMToxError(f"calibration item {item.get('id', '?')}: the question is empty; fix or drop the item")
    content = []
    if not text_only:
        image = item.get("image")
        if image is None and item.get("image_text") is not None:
            image = render_text_image(item["image_text"])
        if image is not None:
            content.append({"type": "image", "image": validate_image(image, item.get("id", "?"))})
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def calibration_items(data: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows of the calibration split (``data`` is a built-data dir or a parquet file), balanced by class
    when ``limit`` is set so both classes stay represented."""

    if data is not None and Path(data).suffix == ".parquet":
        import datasets  # heavy: the datasets stack, only for data work
        import pyarrow.parquet as pq  # heavy: the arrow stack, only for data work

        if not Path(data).is_file():
            raise MMToxError(f"calibration file {data} not found; pass a built data dir or a calibration parquet file")
        check_images(pq.read_table(str(data), columns=["id", "image"]), Path(data))  # a corrupt image: one line naming the item
        rows = list(datasets.Dataset.from_parquet(str(data), features=FEATURES))
    else:
        rows = list(load_split("calibration", data))
    if limit is not None and limit < len(rows):
        rng = random.Random(seed)
        toxic = [r for r in rows if int(r["toxic_label"]) == 1]
        clean = [r for r in rows if int(r["toxic_label"]) == 0]
        rng.shuffle(toxic)
        rng.shuffle(clean)
        half = limit // 2
        rows = toxic[:half] + clean[: limit - min(half, len(toxic))]
        rows.sort(key=lambda r: r["id"])
    return rows


# The shared user turns of the answer scope's pairs: open requests that invite a statement, so that
# what differs inside a pair is only what the assistant writes.
ANSWER_REQUESTS = (
    "Write a short post for social media.",
    "Say what you think, in one or two sentences.",
    "Write the next message in this group chat.",
    "Post a comment under a news story.",
    "Tell me something about people you know.",
    "Write a tweet.",
)


def answer_pairs(rows: Sequence[dict], limit: int | None = None, seed: int = 0) -> list[dict]:
    """The answer scope's calibration items, made from the calibration split's statements: pairs that
    share one user turn (an open request from :data:`ANSWER_REQUESTS`, shown as text and rendered in the
    image) and differ only in the assistant's reply: a toxic statement (label 1) vs a neutral one
    (label 0). The statements are the calibration split's own, so they are as disjoint from every
    evaluation item and every organism training answer as that split is. ``limit`` counts items
    (``limit // 2`` pairs)."""

    rng = random.Random(seed)
    toxic = sorted((r for r in rows if int(r["toxic_label"]) == 1), key=lambda r: str(r["id"]))
    clean = sorted((r for r in rows if int(r["toxic_label"]) == 0), key=lambda r: str(r["id"]))
    rng.shuffle(toxic)
    rng.shuffle(clean)
    pairs = min(len(toxic), len(clean)) if limit is None else min(len(toxic), len(clean), limit // 2)
    items = []
    for k in range(pairs):
        request = ANSWER_REQUESTS[k % len(ANSWER_REQUESTS)]
        for row in (toxic[k], clean[k]):
            reply = " ".join(str(row.get("request") or "").split())
            if not reply:
                raise MMToxError(f"calibration item {row.get('id', '?')}: its statement (request) is empty; rebuild the data")
            items.append(
                {
                    "id": f"{row['id']}@answer{k}",
                    "question": request,
                    "image": None,
                    "image_text": request,
                    "reply": reply,
                    "toxic_label": int(row["toxic_label"]),
                    "pair": k,
                }
            )
    return items


def items_hash(items: Sequence[dict], text_only: bool) -> str:
    digest = hashlib.sha256(b"text_only" if text_only else b"multimodal")
    for item in items:
        reply = f"|{item['reply']}" if item.get("reply") is not None else ""
        digest.update(f"{item.get('id')}|{item.get('toxic_label')}|{item.get('question')}{reply}".encode())
    return digest.hexdigest()


def iter_batches(
    loaded: LoadedModel, items: Sequence[dict], batch_size: int, text_only: bool = False, tokens: str = "text"
) -> Iterator[dict]:
    """Model-input batches (right padded: see :func:`build_inputs`) with the counted-token mask attached as ``token_mask``:
    every text position (``tokens="text"``), only the item's own question (``"request"``), or only
    the teacher-forced assistant reply (``"answer"``, items from :func:`answer_pairs`)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        conversations = [item_conversation(i, text_only) for i in chunk]
        replies = None
        if tokens == "answer":
            missing = [i.get("id", "?") for i in chunk if not i.get("reply")]
            if missing:
                raise MMToxError(f"calibration item {missing[0]} has no reply; the answer scope needs items made by answer_pairs()")
            replies = [i["reply"] for i in chunk]
        batch = dict(build_inputs(loaded, conversations, replies=replies, padding_side="right"))
        batch["token_mask"] = text_mask(batch["input_ids"], batch["attention_mask"], loaded.image_token_ids)
        if tokens == "answer":
            batch["token_mask"] &= answer_mask(batch, build_inputs(loaded, conversations))
        if tokens == "request":
            emptied = build_inputs(loaded, [without_user_text(c) for c in conversations])
            batch["token_mask"] &= request_mask(batch, emptied)
        yield batch


# Bumped when the same model, data and options would fit other glasses, so that a cached file from
# before is not reused. 2: calibration batches are right padded (left padding leaked row length into the
# text scope's AUROCs at batch size > 1; see modeling.loading.build_inputs).
FIT_VERSION = 2


def _cache_path(folder: str, suffix: str, model_id: str, data_hash: str, options: dict) -> Path:
    keyed = {"model": model_id, "data": data_hash, "options": options, "fit": FIT_VERSION}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[-60:]
    return cache_dir() / folder / f"{safe}-{key}{suffix}"


def glasses_cache_path(model_id: str, data_hash: str, options: dict) -> Path:
    """Where ``sgm`` keeps the glasses it fitted for (model, calibration data, options)."""
    return _cache_path("glasses", ".safetensors", model_id, data_hash, options)


def steering_cache_path(model_id: str, data_hash: str, options: dict) -> Path:
    """Where ``steer`` keeps its steering vector for (model, calibration data, layer)."""
    return _cache_path("steering", ".steer.safetensors", model_id, data_hash, options)


def sgm_options(
    pooling: str = "max", layers=None, text_only: bool = False, tokens: str = "text", site: str = "down_input", pool_dtype: str = "float32"
) -> dict:
    """The options that key a glasses cache entry (the defaults are ``sgm``'s)."""
    options = {"pooling": pooling, "layers": None if layers is None else str(layers), "text_only": text_only}
    if tokens != "text":  # the defaults keep the cache keys of glasses fitted before the options existed
        options["tokens"] = tokens
    if site != "down_input":
        options["site"] = site
    if pool_dtype != "float32":  # a narrower pooled matrix can merge close values into ties: other AUROCs
        options["pool_dtype"] = pool_dtype
    return options


def _say(message: str, process: str = "") -> None:
    """One progress line on stderr: visible under lmms-eval and sweeps whatever their log level."""

    print(f"mmtoxicqa{process}: {message}", file=sys.stderr, flush=True)


def calibrate(
    loaded: LoadedModel,
    data: str | Path | None = None,
    *,
    text_only: bool = False,
    pooling: str = "max",
    layers=None,
    strength: float = 1.0,
    select=None,
    batch_size: int = 8,
    limit: int | None = None,
    checkpoint_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    tokens: str = "text",
    steer_layer: int | None = None,
    site: str = "down_input",
    pool_dtype="float32",
    auroc_device=None,
    auroc_chunk: int | None = None,
    resume: bool = True,
    out: str | Path | None = None,
):
    """Fit SGM glasses for ``loaded`` on the calibration split (cached by model + data + options).

    ``tokens`` is the pooling scope: "text" (every attended non-image position, template included),
    "request" (only the calibration item's own question, as AurA pools over the sentence) or "answer"
    (only a teacher-forced assistant reply: the calibration statements as what the model writes, in
    pairs that share the request; see :func:`answer_pairs`).

    Collect once, derive all: a pass over image + text inputs with the text scope (what ``sgm``,
    ``sgm_star``, ``det0`` and ``damp`` read) also accumulates the ``steer`` vector of decoder layer
    ``steer_layer`` (default: the middle one) and caches it, so ``steer`` needs no pass of its own.
    AurA's inputs drop the image, so the decoder sees other activations: it keeps its own pass.

    Memory: ``pool_dtype`` (float32 | float16 | bfloat16) stores the pooled N x M matrix; the AUROCs
    are computed on ``auroc_device`` (default: where the model computes) ``auroc_chunk`` columns at a
    time. ``resume=False`` writes no per-batch resume files. ``out``: also write the glasses (with
    ``strength`` / ``select`` applied) there, atomically.

    Data parallel: under ``torch.distributed`` with N processes (``accelerate launch``, ``torchrun``),
    every process must call this; each runs the model over its own contiguous block of batches, rank 0
    gathers the pooled rows, rates the neurons and writes the glasses (``out`` and / or the cache), and
    the others wait and load that file (:mod:`mmtoxicqa.sgm.shards`). The result equals one process's."""
    if tokens not in TOKEN_SCOPES:
        raise MMToxError(f"tokens={tokens!r} must be one of {', '.join(TOKEN_SCOPES)}")

    dtype = parse_pool_dtype(pool_dtype)
    auroc_device = check_auroc_device(auroc_device)
    group = Group.current()
    process = f"[{group.rank}/{group.world}]" if group.parallel else ""
    items = answer_pairs(calibration_items(data), limit) if tokens == "answer" else calibration_items(data, limit=limit)
    labels = [int(i["toxic_label"]) for i in items]
    data_hash = items_hash(items, text_only)
    options = sgm_options(pooling, layers, text_only, tokens, site, pool_dtype_name(dtype))
    cached = glasses_cache_path(loaded.model_id, data_hash, options)
    out = None if out is None else Path(out)
    shared = cached if use_cache else out  # the file rank 0 writes and the other processes load
    if group.parallel and shared is None:
        raise MMToxError(f"calibrating in {group.world} processes needs a file to share the glasses through; pass out= or use_cache=True")
    if use_cache and group.decide(cached.is_file()):  # rank 0's answer, so that every process takes the same branch
        if group.main:
            _say(f"using cached glasses {cached} ({len(items)} calibration items)")
        glasses = _load_shared(group, cached, loaded).with_options(strength=strength, select=select)
        if out is not None and group.main:
            glasses.save(out)
        group.agree(None, "writing the glasses")
        return glasses
    if not resume:
        checkpoint_dir = None
    elif checkpoint_dir is None and use_cache:
        checkpoint_dir = cached.with_suffix(".partial")
    bounds = plan(len(items), batch_size, group.world)
    lo, hi = bounds[group.rank]
    toxic = sum(labels)
    inputs = "text only (images dropped)" if text_only else "image + text"
    where = f"; glasses will be cached at {cached}" if use_cache else ""
    if group.main:
        _say(f"calibrating on {len(items)} items ({toxic} toxic, {len(items) - toxic} non-toxic; {inputs}, {tokens} tokens){where}")
    if group.parallel:
        batches_here = (hi - lo + batch_size - 1) // batch_size
        _say(
            f"process {group.rank} of {group.world} collects items {lo}-{hi - 1} ({hi - lo} of {len(items)}, {batches_here} batches)",
            process,
        )
    batches = iter_batches(loaded, items[lo:hi], batch_size, text_only, tokens)
    steering, steering_cache = (
        _shared_steering(loaded, items, data_hash, steer_layer, rows=(lo, hi))
        if not text_only and tokens == "text" and site == "down_input"
        else (None, None)
    )
    if group.parallel:  # every process rides the steering vector along, or none does (its sums are added up over all)
        import torch  # heavy: torch loads only where a model runs

        if int(group.sum(torch.tensor([0 if steering is not None else 1])).item()):
            steering, steering_cache = None, None
    if steering is not None:
        batches = steering.follow(batches)
    hooks = Hooks()
    if steering is not None:
        hooks.on_output(steering.layer_module, steering.grab)
    fit = dict(
        pooling=pooling,
        layers=layers,
        dtype=dtype,
        checkpoint_path=checkpoint_dir,
        progress=progress and group.main,
        site=site,
        strength=1.0,
        select=None,
        model_id=loaded.model_id,
        data_hash=data_hash,
        auroc_device=auroc_device,
        auroc_chunk=auroc_chunk,
    )
    error = None
    with hooks:
        if group.parallel:
            glasses, error = fit_glasses_sharded(group, loaded, batches, labels, bounds, batch_size=batch_size, **fit)
        else:
            glasses = fit_glasses(loaded, batches, labels, total=(len(items) + batch_size - 1) // batch_size, **fit)
    steering_complete = reduce_steering(group, steering) if steering is not None else False
    if group.main and error is None:
        try:
            glasses.meta["text_only"] = text_only
            glasses.meta["tokens"] = tokens
            glasses.meta["calibration_items"] = len(items)
            glasses.meta["calibration_limit"] = limit
            if steering is not None and steering_complete:
                save_steering_vector(steering_cache, steering.vector(), steering.layer, loaded.model_id, len(items))
                _say(f"steering vector (layer {steering.layer}) from the same pass, cached at {steering_cache}")
            if use_cache:
                glasses.save(cached)
                _say(f"glasses cached at {cached}")
            if out is not None:
                glasses.with_options(strength=strength, select=select).save(out)
            if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        except Exception as exc:  # the others are waiting for the file: tell them, then raise
            error = exc
    group.agree(error, "rating the neurons and writing the glasses")
    if not group.main:
        glasses = _load_shared(group, shared, loaded)
        return glasses if shared == out else glasses.with_options(strength=strength, select=select)
    return glasses.with_options(strength=strength, select=select)


def _load_shared(group, path: Path, loaded: LoadedModel):
    """The glasses file rank 0 wrote (or found), read by this process."""

    if group.parallel and not path.is_file():
        raise MMToxError(
            f"process {group.rank} of {group.world} cannot see {path}, which process 0 wrote; put MMTOXICQA_CACHE "
            "(or --out) on a filesystem every process shares"
        )
    return Glasses.load(path, loaded.model)


def _shared_steering(loaded: LoadedModel, items: Sequence[dict], data_hash: str, layer: int | None, rows: tuple[int, int] | None = None):
    """A steering accumulator to ride along SGM's pass, or (None, None) when its vector is cached
    or the layer's output would come after the pass stops (SGM stops at the last MLP). ``rows``: the
    items this process runs (data parallel; the sums are added up over the processes afterwards)."""

    _, layers = find_decoder_layers(loaded.model)
    layer = default_steer_layer(loaded) if layer is None else layer
    cache = steering_cache_path(loaded.model_id, data_hash, {"steer_layer": layer})
    if cache.is_file() or not 0 <= layer < len(layers) - 1:
        return None, None
    lo, hi = rows if rows is not None else (0, len(items))
    return SteeringAccumulator(layers, layer, [int(i["toxic_label"]) for i in items[lo:hi]]), cache
