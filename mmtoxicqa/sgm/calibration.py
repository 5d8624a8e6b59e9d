"""From labelled multimodal items to SGM glasses: batching, caching, and ``mmtoxicqa calibrate``.

Calibration items go through the model's own chat template and processor (image +
text, exactly as at evaluation time), so the neurons are rated on fused multimodal
activations. ``text_only=True`` drops the images (the AurA-style unimodal ablation).
Glasses are cached under ``$MMTOXICQA_CACHE/glasses`` keyed by model + data hash +
options, so ``--model sgm`` without ``glasses=`` calibrates once and reuses the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.data.schema import FEATURES
from mmtoxicqa.data.splits import check_images, load_split, validate_image
from mmtoxicqa.modeling.hooks import Hooks
from mmtoxicqa.modeling.loading import LoadedModel, build_inputs, load_model
from mmtoxicqa.modeling.placement import LOAD_OPTIONS
from mmtoxicqa.modeling.positions import TOKEN_SCOPES, answer_mask, request_mask, text_mask, without_user_text
from mmtoxicqa.sgm import find_decoder_layers, fit_glasses
from mmtoxicqa.sgm.glasses import Glasses
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
    """Model-input batches (left padded) with the counted-token mask attached as ``token_mask``:
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
        batch = dict(build_inputs(loaded, conversations, replies=replies))
        batch["token_mask"] = text_mask(batch["input_ids"], batch["attention_mask"], loaded.image_token_ids)
        if tokens == "answer":
            batch["token_mask"] &= answer_mask(batch, build_inputs(loaded, conversations))
        if tokens == "request":
            emptied = build_inputs(loaded, [without_user_text(c) for c in conversations])
            batch["token_mask"] &= request_mask(batch, emptied)
        yield batch


def _cache_path(folder: str, suffix: str, model_id: str, data_hash: str, options: dict) -> Path:
    key = hashlib.sha256(json.dumps({"model": model_id, "data": data_hash, "options": options}, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)[-60:]
    return cache_dir() / folder / f"{safe}-{key}{suffix}"


def glasses_cache_path(model_id: str, data_hash: str, options: dict) -> Path:
    """Where ``sgm`` keeps the glasses it fitted for (model, calibration data, options)."""
    return _cache_path("glasses", ".safetensors", model_id, data_hash, options)


def steering_cache_path(model_id: str, data_hash: str, options: dict) -> Path:
    """Where ``steer`` keeps its steering vector for (model, calibration data, layer)."""
    return _cache_path("steering", ".steer.safetensors", model_id, data_hash, options)


def sgm_options(pooling: str = "max", layers=None, text_only: bool = False, tokens: str = "text", site: str = "down_input") -> dict:
    """The options that key a glasses cache entry (the defaults are ``sgm``'s)."""
    options = {"pooling": pooling, "layers": None if layers is None else str(layers), "text_only": text_only}
    if tokens != "text":  # the defaults keep the cache keys of glasses fitted before the options existed
        options["tokens"] = tokens
    if site != "down_input":
        options["site"] = site
    return options


def _say(message: str) -> None:
    """One progress line on stderr: visible under lmms-eval and sweeps whatever their log level."""

    print(f"mmtoxicqa: {message}", file=sys.stderr, flush=True)


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
):
    """Fit SGM glasses for ``loaded`` on the calibration split (cached by model + data + options).

    ``tokens`` is the pooling scope: "text" (every attended non-image position, template included),
    "request" (only the calibration item's own question, as AurA pools over the sentence) or "answer"
    (only a teacher-forced assistant reply: the calibration statements as what the model writes, in
    pairs that share the request; see :func:`answer_pairs`).

    Collect once, derive all: a pass over image + text inputs with the text scope (what ``sgm``,
    ``sgm_star``, ``det0`` and ``damp`` read) also accumulates the ``steer`` vector of decoder layer
    ``steer_layer`` (default: the middle one) and caches it, so ``steer`` needs no pass of its own.
    AurA's inputs drop the image, so the decoder sees other activations: it keeps its own pass."""
    if tokens not in TOKEN_SCOPES:
        raise MMToxError(f"tokens={tokens!r} must be one of {', '.join(TOKEN_SCOPES)}")

    items = answer_pairs(calibration_items(data), limit) if tokens == "answer" else calibration_items(data, limit=limit)
    labels = [int(i["toxic_label"]) for i in items]
    data_hash = items_hash(items, text_only)
    options = sgm_options(pooling, layers, text_only, tokens, site)
    cached = glasses_cache_path(loaded.model_id, data_hash, options)
    if use_cache and cached.is_file():
        _say(f"using cached glasses {cached} ({len(items)} calibration items)")
        return Glasses.load(cached, loaded.model).with_options(strength=strength, select=select)
    if checkpoint_dir is None and use_cache:
        checkpoint_dir = cached.with_suffix(".partial")
    toxic = sum(labels)
    inputs = "text only (images dropped)" if text_only else "image + text"
    where = f"; glasses will be cached at {cached}" if use_cache else ""
    _say(f"calibrating on {len(items)} items ({toxic} toxic, {len(items) - toxic} non-toxic; {inputs}, {tokens} tokens){where}")
    batches = iter_batches(loaded, items, batch_size, text_only, tokens)
    steering, steering_cache = (
        _shared_steering(loaded, items, data_hash, steer_layer)
        if not text_only and tokens == "text" and site == "down_input"
        else (None, None)
    )
    if steering is not None:
        batches = steering.follow(batches)
    hooks = Hooks()
    if steering is not None:
        hooks.on_output(steering.layer_module, steering.grab)
    with hooks:
        glasses = fit_glasses(
            loaded,
            batches,
            labels,
            pooling=pooling,
            layers=layers,
            strength=1.0,
            select=None,
            model_id=loaded.model_id,
            data_hash=data_hash,
            checkpoint_path=checkpoint_dir,
            progress=progress,
            total=(len(items) + batch_size - 1) // batch_size,
            site=site,
        )
    glasses.meta["text_only"] = text_only
    glasses.meta["tokens"] = tokens
    glasses.meta["calibration_items"] = len(items)
    glasses.meta["calibration_limit"] = limit
    if steering is not None and steering.complete:
        save_steering_vector(steering_cache, steering.vector(), steering.layer, loaded.model_id, len(items))
        _say(f"steering vector (layer {steering.layer}) from the same pass, cached at {steering_cache}")
    if use_cache:
        glasses.save(cached)

        if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        _say(f"glasses cached at {cached}")
    return glasses.with_options(strength=strength, select=select)


def _shared_steering(loaded: LoadedModel, items: Sequence[dict], data_hash: str, layer: int | None):
    """A steering accumulator to ride along SGM's pass, or (None, None) when its vector is cached
    or the layer's output would come after the pass stops (SGM stops at the last MLP)."""

    _, layers = find_decoder_layers(loaded.model)
    layer = default_steer_layer(loaded) if layer is None else layer
    cache = steering_cache_path(loaded.model_id, data_hash, {"steer_layer": layer})
    if cache.is_file() or not 0 <= layer < len(layers) - 1:
        return None, None
    return SteeringAccumulator(layers, layer, [int(i["toxic_label"]) for i in items]), cache


def add_cli(subparsers) -> None:

    parser = subparsers.add_parser(
        "calibrate",
        help="fit SGM glasses (per-neuron AUROC + dampening) for a model on the calibration split",
        description="Find the language-decoder MLP neurons whose activation separates toxic from non-toxic "
        "multimodal inputs, rate them by AUROC and write the glasses (safetensors + JSON metadata). An "
        "interrupted run resumes from its last finished batch when rerun with the same arguments.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="hub id or local model dir (default: the embedded model)")
    parser.add_argument("--data", default=None, help="built data dir or calibration parquet (default: $MMTOXICQA_DATA)")
    parser.add_argument("--out", required=True, help="glasses file to write (.safetensors)")
    parser.add_argument("--text-only", action="store_true", help="drop the images (the AurA-style unimodal ablation)")
    parser.add_argument("--pooling", choices=("max", "mean"), default="max", help="pooling over counted text tokens")
    parser.add_argument("--layers", default=None, help="decoder layers to use, e.g. '10:20' (default: all)")
    parser.add_argument(
        "--tokens",
        choices=TOKEN_SCOPES,
        default="text",
        help="pooling scope: every text position incl. the chat template ('text'), the item's own question only ('request'), "
        "or a teacher-forced assistant reply only ('answer': the calibration statements as the model's own answer to an open "
        "request, toxic vs neutral pairs sharing the request)",
    )
    parser.add_argument(
        "--site",
        choices=("down_input", "gate_up_output"),
        default="down_input",
        help="which neurons: the input of each MLP output projection ('down_input') or the outputs of its input projections "
        "(gate_proj and up_proj, each with its own alphas: AurA's released placement, 'gate_up_output')",
    )
    parser.add_argument("--strength", type=float, default=1.0, help="alpha = 1 - strength * (2 AUROC - 1)")
    parser.add_argument(
        "--select",
        default=None,
        help="narrow to 'top_k=K', 'top_fraction=F', 'min_auroc=T' or 'fdr=Q' (AUROC above chance at false discovery rate Q, "
        "Benjamini-Hochberg); default: all AUROC > 0.5 (the paper's rule)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many calibration items (class-balanced)")
    parser.add_argument("--device", default="cpu")
    add_load_arguments(parser)
    parser.add_argument("--resume-dir", default=None, help="folder for per-batch partial results (default: next to --out)")
    parser.set_defaults(func=_cli_calibrate)

    show = subparsers.add_parser(
        "glasses",
        help="summarise SGM glasses: neurons dampened per layer, AUROC distribution (no model needed)",
        description="Print what a glasses file holds: the calibration options and class sizes, how many neurons "
        "each layer dampens, the smallest alpha and the AUROC quantiles. With no FILE, list the glasses cached "
        "under $MMTOXICQA_CACHE/glasses (those `sgm` fitted on its own). --strength/--select show the effect of "
        "those options without refitting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    show.add_argument("files", nargs="*", metavar="FILE", help="glasses .safetensors files (default: every cached one)")
    show.add_argument("--strength", type=float, default=None, help="re-derive alpha with this strength")
    show.add_argument("--select", default=None, help="re-derive alpha with this narrowing, e.g. 'top_fraction=0.01'")
    show.add_argument("--json", default=None, metavar="OUT", help="also write the summaries (a list) to this JSON file")
    show.set_defaults(func=_cli_glasses)


def add_load_arguments(parser) -> None:
    """The loading options of ``--model_args`` (mmtoxicqa.modeling.placement.LOAD_OPTIONS) as command-line flags."""
    parser.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 or auto (float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (only for models you trust)")
    parser.add_argument(
        "--device-map",
        default=None,
        help="split the model over devices: auto, balanced, balanced_low_0, sequential, or a JSON map (text or .json file) of module -> device",
    )
    parser.add_argument("--max-memory", default=None, help="per-device cap with --device-map, e.g. '0:20GiB;1:20GiB;cpu:64GiB'")
    parser.add_argument("--attn-implementation", default=None, help="eager, sdpa or flash_attention_2 (default: the model's)")
    parser.add_argument("--offload-folder", default=None, help="folder for the weights a device map sends to disk")
    parser.add_argument("--min-pixels", type=int, default=None, help="image processor pixel budget, lower bound (Qwen2-VL-style)")
    parser.add_argument("--max-pixels", type=int, default=None, help="image processor pixel budget, upper bound (Qwen2-VL-style)")


def load_from_args(args):
    """``load_model`` with the flags of :func:`add_load_arguments` (and ``--model`` / ``--device``)."""

    return load_model(args.model, **{name: getattr(args, name) for name in LOAD_OPTIONS})


def _cli_calibrate(args) -> int:

    loaded = load_from_args(args)
    out = Path(args.out)
    resume = Path(args.resume_dir) if args.resume_dir else out.with_name(out.name + ".partial")
    start = time.perf_counter()
    glasses = calibrate(
        loaded,
        args.data,
        text_only=args.text_only,
        pooling=args.pooling,
        layers=args.layers,
        strength=args.strength,
        select=args.select,
        batch_size=args.batch_size,
        limit=args.limit,
        checkpoint_dir=resume,
        use_cache=False,
        tokens=args.tokens,
        site=args.site,
    )
    glasses.save(out)

    shutil.rmtree(resume, ignore_errors=True)
    print(glasses.summary_text())
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s")
    return 0


def _cli_glasses(args) -> int:

    listing = not args.files
    files = [Path(f) for f in args.files] or sorted((cache_dir() / "glasses").glob("*.safetensors"))
    if not files:
        raise MMToxError(f"no glasses cached in {cache_dir() / 'glasses'}; make some with `mmtoxicqa calibrate --out FILE`")
    summaries = []
    for path in files:
        try:
            glasses = Glasses.load(path)
        except MMToxError:
            if listing:  # the cache folder also holds other artifacts (e.g. steering vectors)
                continue
            raise
        if args.strength is not None or args.select is not None:
            glasses = glasses.with_options(
                strength=glasses.meta.get("strength", 1.0) if args.strength is None else args.strength,
                select=args.select if args.select is not None else glasses.meta.get("select"),
            )
        summary = dict(
            glasses.summary(),
            file=str(path),
            layers_option=glasses.meta.get("layers"),
            text_only=glasses.meta.get("text_only"),
            tokens=glasses.meta.get("tokens", "text"),
        )
        summaries.append(summary)
        print(f"== {path}")
        print(glasses.summary_text())
    if args.json:
        write_json_atomic(Path(args.json), summaries)
        print(f"wrote {args.json}")
    return 0
