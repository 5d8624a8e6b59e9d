"""``mmtoxicqa build-data``: public sources -> MM-TOXIC-QA parquet splits + datasheet.

Pipeline: read every source through a hash-tracking reader (loaders skip and count
malformed rows), map labels onto the one taxonomy, assemble the four splits with
seeded, deterministic sampling, render typographic images, drop calibration items
that collide with any eval item, write the splits with ``datasets`` (``image`` is a
``datasets.Image`` column) and a datasheet (JSON + Markdown).

Same inputs + seed => byte-identical parquet files: every ordering is explicit (no
set/dict iteration over unordered data), randomness comes from ``random.Random``
seeded with strings (independent of PYTHONHASHSEED), PNG encoding uses fixed settings,
and image bytes are stored without paths.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from mmtoxicqa import __version__
from mmtoxicqa.core import paths
from mmtoxicqa.core.atomic import umask_mode, write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_file
from mmtoxicqa.core.render import (
    png_bytes,
    render_numbered_list_image,
    render_text_image,
)
from mmtoxicqa.data import attacks, loaders, taxonomy
from mmtoxicqa.data.attacks import Request
from mmtoxicqa.data.dedup import dedupe_rows, enforce_disjoint
from mmtoxicqa.data.harmless import HARMLESS_TOPICS
from mmtoxicqa.data.hub import write_hub_layout
from mmtoxicqa.data.loaders import SourceItem
from mmtoxicqa.data.schema import COLUMNS, EVAL_SPLITS, FEATURES, SPLITS
from mmtoxicqa.data.sources import (
    UPSTREAMS,
    SourceDir,
    download_sources,
    load_manifest,
    verify_sources,
)

BUILDER_VERSION = "1.0.0"

# Sampling caps (per build). Standard keeps every FigStep and MM-SafetyBench question.
DEFAULT_CAPS: dict[str, int] = {
    "adversarial_requests": 150,  # requests per request-based attack (same requests for all four)
    "adversarial_toxic_continuation": 150,  # statements (half ToxiGen hate, half Davidson hate/offensive)
    "benign_toxigen_neutral": 150,
    "calibration_toxigen_hate": 300,
    "calibration_toxigen_neutral": 300,
    "calibration_davidson_toxic": 300,  # half hate, half offensive
    "calibration_davidson_neither": 300,
}

# Longest question a build accepts. The public sources' longest is about 600 characters; a
# pasted document (1 MB drove a 135M model to 16 GB) is refused, naming the item.
MAX_QUESTION_CHARS = 4000


# --------------------------------------------------------------------------- helpers
def _rng(seed: int, *purpose: str) -> random.Random:
    return random.Random(":".join([str(seed), *purpose]))


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None = None):

    return tqdm(iterable, desc=desc, total=total, unit="item", leave=False, disable=None if enabled else True)


def round_robin(groups: dict[str, list], n: int) -> list:
    """Take items alternately from each group (sorted by name) until ``n`` are taken or all are used."""
    names = sorted(groups)
    cursors = {name: 0 for name in names}
    out: list = []
    while len(out) < n:
        progressed = False
        for name in names:
            if len(out) >= n:
                break
            if cursors[name] < len(groups[name]):
                out.append(groups[name][cursors[name]])
                cursors[name] += 1
                progressed = True
        if not progressed:
            break
    return out


def _shuffled(items: Sequence, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


@contextlib.contextmanager
def _quiet_datasets(quiet: bool):
    """Silence the ``datasets`` progress bars while writing, restoring the previous setting."""
    import datasets as hf_tqdm  # heavy: the datasets stack, only for data work

    was_disabled = hf_tqdm.are_progress_bars_disabled()
    if quiet and not was_disabled:
        hf_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            hf_tqdm.enable_progress_bars()


class _Images:
    """Renders typographic images to PNG bytes, caching by (style, text)."""

    def __init__(self):
        self._cache: dict[tuple[str, str], bytes] = {}

    def plain(self, text: str) -> bytes:
        return self._get("plain", text)

    def numbered(self, text: str) -> bytes:
        return self._get("numbered", text)

    def _get(self, style: str, text: str) -> bytes:

        key = (style, text)
        if key not in self._cache:
            image = render_text_image(text) if style == "plain" else render_numbered_list_image(text)
            self._cache[key] = png_bytes(image)
        return self._cache[key]


def _row(split, id_, category, attack, source, question, image, image_text, request, toxic_label) -> dict:
    return {
        "id": id_,
        "split": split,
        "category": category,
        "attack": attack,
        "source": source,
        "question": question,
        "image": {"bytes": image, "path": None},
        "image_text": image_text,
        "request": request,
        "toxic_label": int(toxic_label),
    }


# --------------------------------------------------------------------------- split assembly
def _standard(figstep: list[SourceItem], mmsb: list[SourceItem], images: _Images, progress: bool) -> list[dict]:
    rows = []
    for item in _progress(figstep + mmsb, "standard split", progress):
        req = item.request
        if item.source == "figstep":
            # The SafeBench question in text, its topic (the list heading) as a typographic image.
            question, image_text = req.text, req.heading
        else:
            # MM-SafetyBench TYPO: the key phrase in the image, the image-referring prompt in text.
            question, image_text = item.prompt, req.key_phrase
        rows.append(
            _row(
                "standard",
                f"standard-{item.source}-{item.key}",
                item.category,
                "none",
                item.source,
                question,
                images.plain(image_text),
                image_text,
                req.text,
                1,
            )
        )
    return rows


def _select_requests(figstep: list[SourceItem], mmsb: list[SourceItem], n: int, seed: int) -> list[SourceItem]:
    """A seeded, category-balanced subset of harmful requests (shared by all request attacks)."""
    by_category: dict[str, list[SourceItem]] = defaultdict(list)
    for item in figstep + mmsb:
        by_category[item.category].append(item)
    groups = {cat: _shuffled(items, _rng(seed, "adversarial", cat)) for cat, items in by_category.items()}
    return round_robin(groups, n)


def _adversarial(requests: list[SourceItem], statements: list[SourceItem], images: _Images, seed: int, progress: bool) -> list[dict]:
    rows = []
    for attack in attacks.attack_names(applies_to="request"):
        transform = attacks.get_attack(attack)
        rng = _rng(seed, "variant", attack)
        for item in _progress(requests, f"adversarial: {attack}", progress):
            variant = rng.randrange(attacks.template_count(attack))
            question, image_text = transform(item.request, variant)
            if attack == "typographic":
                image = item.image if item.image is not None else images.numbered(image_text)
            else:
                image = images.plain(image_text)
            rows.append(
                _row(
                    "adversarial",
                    f"adversarial-{attack}-{item.source}-{item.key}",
                    item.category,
                    attack,
                    item.source,
                    question,
                    image,
                    image_text,
                    item.request.text,
                    1,
                )
            )
    rng = _rng(seed, "variant", "toxic_continuation")
    for item in _progress(statements, "adversarial: toxic_continuation", progress):
        variant = rng.randrange(attacks.template_count("toxic_continuation"))
        question, image_text = attacks.toxic_continuation(item.request, variant)
        rows.append(
            _row(
                "adversarial",
                f"adversarial-toxic_continuation-{item.source}-{item.key}",
                item.category,
                "toxic_continuation",
                item.source,
                question,
                images.plain(image_text),
                image_text,
                item.request.text,
                1,
            )
        )
    return rows


def _continuation_rows(split: str, items: list[SourceItem], images: _Images, seed: int, progress: bool) -> list[dict]:
    rng = _rng(seed, "variant", split, "continuation")
    rows = []
    for item in _progress(items, f"{split} split", progress):
        variant = rng.randrange(attacks.template_count("toxic_continuation"))
        question, image_text = attacks.toxic_continuation(item.request, variant)
        rows.append(
            _row(
                split,
                f"{split}-{item.source}-{item.key}",
                item.category,
                "none",
                item.source,
                question,
                images.plain(image_text),
                image_text,
                item.request.text,
                item.toxic_label,
            )
        )
    return rows


def _benign(neutral: list[SourceItem], figstep_benign: list[SourceItem], images: _Images, seed: int, progress: bool) -> list[dict]:
    rows = _continuation_rows("benign", neutral, images, seed, progress)
    rng = _rng(seed, "variant", "benign", "typographic")
    for item in figstep_benign:
        question, image_text = attacks.typographic(item.request, rng.randrange(attacks.template_count("typographic")))
        rows.append(
            _row(
                "benign",
                f"benign-figstep-{item.key}",
                item.category,
                "typographic",
                "figstep",
                question,
                images.numbered(image_text),
                image_text,
                item.request.text,
                0,
            )
        )
    for index, (category, heading, question_text) in enumerate(HARMLESS_TOPICS):
        request = Request(text=question_text, instruction=heading, topic=heading)
        rows.append(
            _row(
                "benign",
                f"benign-mmtoxicqa-{index:02d}-plain",
                category,
                "none",
                "mmtoxicqa",
                question_text,
                images.plain(heading),
                heading,
                question_text,
                0,
            )
        )
        question, image_text = attacks.typographic(request, rng.randrange(attacks.template_count("typographic")))
        rows.append(
            _row(
                "benign",
                f"benign-mmtoxicqa-{index:02d}-typographic",
                category,
                "typographic",
                "mmtoxicqa",
                question,
                images.numbered(image_text),
                image_text,
                question_text,
                0,
            )
        )
    return rows


def _extra_rows(items: list[loaders.ExtraItem]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    used: Counter = Counter()
    for item in items:
        base = f"{item.split}-extra-{item.digest[:12]}"
        used[base] += 1
        id_ = base if used[base] == 1 else f"{base}-{used[base]}"
        out[item.split].append(
            _row(
                item.split,
                id_,
                item.category,
                item.attack,
                "extra",
                item.question,
                item.image,
                item.image_text,
                item.request,
                item.toxic_label,
            )
        )
    return out


# --------------------------------------------------------------------------- pools
def _split_half(items: list[SourceItem], rng: random.Random) -> tuple[list[SourceItem], list[SourceItem]]:
    """Shuffle and cut into (eval pool, calibration pool); eval gets the larger half."""
    items = _shuffled(items, rng)
    cut = math.ceil(len(items) / 2)
    return items[:cut], items[cut:]


def _pools(toxigen: list[SourceItem], davidson: list[SourceItem], seed: int) -> dict[str, dict[str, list[SourceItem]]]:
    """Partition ToxiGen and Davidson items into disjoint eval and calibration pools, per group/class."""
    pools: dict[str, dict[str, list[SourceItem]]] = {
        "eval_toxigen_hate": {},
        "eval_toxigen_neutral": {},
        "calib_toxigen_hate": {},
        "calib_toxigen_neutral": {},
        "eval_davidson": {},
        "calib_davidson_toxic": {},
        "calib_davidson_neither": {},
    }
    by_label: dict[str, list[SourceItem]] = defaultdict(list)
    for item in toxigen:
        by_label[item.label].append(item)
    for label in sorted(by_label):
        kind, group = label.split("_", 1)
        ev, cal = _split_half(by_label[label], _rng(seed, "pool", "toxigen", label))
        pools[f"eval_toxigen_{kind}"][group] = ev
        pools[f"calib_toxigen_{kind}"][group] = cal
    by_class: dict[str, list[SourceItem]] = defaultdict(list)
    for item in davidson:
        by_class[item.label].append(item)
    for name in sorted(by_class):
        if name == "neither":
            pools["calib_davidson_neither"][name] = _shuffled(by_class[name], _rng(seed, "pool", "davidson", name))
            continue
        ev, cal = _split_half(by_class[name], _rng(seed, "pool", "davidson", name))
        pools["eval_davidson"][name] = ev
        pools["calib_davidson_toxic"][name] = cal
    return pools


# --------------------------------------------------------------------------- datasheet
def _check_question_length(question: str, where: str) -> None:
    if len(question) > MAX_QUESTION_CHARS:
        raise MMToxError(
            f"{where}: the question is {len(question):,} characters, over the {MAX_QUESTION_CHARS:,}-character cap "
            "(MAX_QUESTION_CHARS); shorten it or drop the item"
        )


def _counts(rows_by_split: dict[str, list[dict]]) -> dict:
    table: dict = {}
    for split in SPLITS:
        nested: dict[str, dict[str, int]] = {}
        counter = Counter((r["category"], r["attack"]) for r in rows_by_split[split])
        for (category, attack), n in sorted(counter.items()):
            nested.setdefault(category, {})[attack] = n
        labels = Counter(r["toxic_label"] for r in rows_by_split[split])
        sources = Counter(r["source"] for r in rows_by_split[split])
        table[split] = {
            "rows": len(rows_by_split[split]),
            "toxic_label": {str(k): labels[k] for k in sorted(labels)},
            "by_source": dict(sorted(sources.items())),
            "by_category_attack": nested,
        }
    return table


def _bad_word_audit(rows: list[dict], words: list[str]) -> dict:
    words = [w for w in words if re.search(r"\w", w)]
    if not words:
        return {"entries": 0, "benign_rows_with_bad_word": 0, "ids": []}
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w))) + r")(?!\w)")
    hits = sorted(r["id"] for r in rows if pattern.search(r["request"].lower()) or pattern.search(r["question"].lower()))
    return {"entries": len(words), "benign_rows_with_bad_word": len(hits), "ids": hits[:50]}


def _markdown(sheet: dict) -> str:
    lines = [
        "# MM-TOXIC-QA datasheet",
        "",
        "Warning: this benchmark contains offensive and harmful text by design. It is for research on",
        "measuring and reducing toxic output of multimodal models; do not use it to train models to comply.",
        "",
        f"- builder version: `{sheet['builder_version']}`, seed: `{sheet['seed']}`",
        "- splits: " + ", ".join(f"{s} ({sheet['counts'][s]['rows']})" for s in SPLITS),
        "- `calibration` is for neuron discovery only (label column `toxic_label`), never an eval task.",
        f"- taxonomy: {', '.join(sheet['taxonomy'])}",
        "",
        "## Counts per split x category x attack",
        "",
        "| split | category | attack | rows |",
        "| --- | --- | --- | ---: |",
    ]
    for split in SPLITS:
        for category, attacks_ in sheet["counts"][split]["by_category_attack"].items():
            for attack, n in attacks_.items():
                lines.append(f"| {split} | {category} | {attack} | {n} |")
        lines.append(f"| **{split}** | **all** | **all** | **{sheet['counts'][split]['rows']}** |")
    lines += [
        "",
        "## Label balance and sources per split",
        "",
        "| split | toxic_label=1 | toxic_label=0 | rows by source |",
        "| --- | ---: | ---: | --- |",
    ]
    for split in SPLITS:
        c = sheet["counts"][split]
        by_source = ", ".join(f"{k} {v}" for k, v in c["by_source"].items())
        lines.append(f"| {split} | {c['toxic_label'].get('1', 0)} | {c['toxic_label'].get('0', 0)} | {by_source} |")
    lines += [
        "",
        "## Sources",
        "",
        "| source | upstream @ commit | license | read | skipped (malformed) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in sheet["sources"].items():
        read = ", ".join(f"{k} {v}" for k, v in info["read"].items() if ":" not in k)
        skipped = ", ".join(f"{k} {v}" for k, v in info["skipped_malformed"].items()) or "none"
        upstream = f"{info['repo']} @ {info['commit'][:12]}" if info.get("repo") else "-"
        lines.append(f"| {name} | {upstream} | {info.get('license', '-')} | {read} | {skipped} |")
    tg = sheet["toxigen_groups"]
    lines += [
        "",
        f"ToxiGen groups read: hate ({len(tg['hate'])}): {', '.join(tg['hate'])}; neutral ({len(tg['neutral'])}): {', '.join(tg['neutral'])}.",
        "",
        "## Sampling caps",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in sheet["caps"].items()]
    d = sheet["disjointness"]
    lines += [
        "",
        "## Calibration / eval disjointness",
        "",
        f"- method: {d['method']}",
        f"- calibration rows checked: {d['calibration_checked']}, dropped as colliding: {d['dropped']}, "
        f"collisions after the drop: {d['collisions_after_drop']} -> **{'passed' if d['passed'] else 'FAILED'}**",
        f"- calibration rows dropped as duplicates of each other: {sheet['calibration_duplicates_dropped']}",
        "",
        "## Benign-split bad-word audit (RealToxicityPrompts list)",
        "",
        f"- {sheet['bad_words']['entries']} entries; benign rows containing one: {sheet['bad_words']['benign_rows_with_bad_word']}",
        "",
        "## Input files (sha256)",
        "",
        f"{len(sheet['input_files'])} files read; the full list is in `datasheet.json`. {sheet['manifest_check']['summary']}",
        "",
    ]
    for rel, digest in sheet["input_files"].items():
        if "/images/" not in rel:
            lines.append(f"- `{rel}` `{digest}`")
    differing = sheet["manifest_check"].get("differing_sha256", {})
    if differing:
        lines += ["", f"**{len(differing)} source files differ from the pinned manifest** (pinned -> read):", ""]
        lines += [f"- `{rel}` `{pair['expected']}` -> `{pair['actual']}`" for rel, pair in list(differing.items())[:50]]
    lines += ["", "## Output files", ""]
    lines += [f"- `{s}.parquet` sha256 `{sheet['outputs'][s]['sha256']}`" for s in SPLITS]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- build
def build(
    sources: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    extra: str | os.PathLike | None = None,
    *,
    caps: dict[str, int] | None = None,
    manifest: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Build MM-TOXIC-QA into ``out`` and return the datasheet (also written as JSON and Markdown).

    ``sources``: a folder laid out like ``../shared/data``; ``None`` downloads the pinned
    files into the cache and verifies their sha256 first. ``extra``: a researcher's JSON
    Lines items (see :func:`mmtoxicqa.data.loaders.load_extra`). ``caps`` overrides
    :data:`DEFAULT_CAPS` entries. ``warn`` receives each warning (default: printed to stderr,
    also with ``progress=False``): source files whose sha256 differs from the manifest, and
    ``extra`` items that were dropped (with why).
    """
    import datasets  # heavy: the datasets stack, only for data work

    say = log or (lambda _msg: None)
    warn = warn or _warn_stderr
    started = time.monotonic()
    caps = {**DEFAULT_CAPS, **(caps or {})}
    unknown = sorted(set(caps) - set(DEFAULT_CAPS))
    if unknown:
        raise MMToxError(f"unknown cap(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_CAPS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MMToxError(f"seed must be an integer, got {seed!r}")
    manifest_data = manifest
    downloaded = sources is None
    if downloaded:
        manifest_data = manifest_data if manifest_data is not None else load_manifest()
        root = paths.cache_dir() / "sources"
        say(f"downloading pinned source files into {root}")
        download_sources(root, manifest_data, progress=progress)
        verify_sources(root, manifest_data)
    else:
        root = Path(sources).expanduser()
        if not root.is_dir():
            raise MMToxError(f"--sources {root} is not a folder; point it at the source data (e.g. --sources ../shared/data)")
    out_dir = Path(out).expanduser() if out is not None else paths.data_dir()

    src = SourceDir(root)
    say("reading sources")
    figstep = loaders.load_figstep(src)
    figstep_benign = loaders.load_figstep_benign(src)
    mmsb = loaders.load_mmsafetybench(src)
    toxigen = loaders.load_toxigen(src)
    davidson = loaders.load_davidson(src)
    bad_words, bad_words_result = loaders.load_bad_words(src)
    extra_items: list[loaders.ExtraItem] = []
    extra_result = None
    input_hashes = dict(src.hashes)
    manifest_check = _manifest_check(input_hashes, manifest_data, downloaded)
    for line in _manifest_warnings(manifest_check):
        warn(line)
    if extra is not None:
        extra_items, extra_result, extra_hashes = loaders.load_extra(extra)
        for item in extra_items:
            _check_question_length(item.question, f"--extra file {extra} line {item.line}")
        input_hashes.update(extra_hashes)
        report = loaders.extra_report(extra_result)
        if report:
            warn(report)

    pools = _pools(toxigen.items, davidson.items, seed)
    images = _Images()

    say("assembling splits")
    standard = _standard(figstep.items, mmsb.items, images, progress)
    requests = _select_requests(figstep.items, mmsb.items, caps["adversarial_requests"], seed)
    n_cont = caps["adversarial_toxic_continuation"]
    statements = round_robin(pools["eval_toxigen_hate"], n_cont - n_cont // 2)
    statements += round_robin(pools["eval_davidson"], n_cont - len(statements))
    adversarial = _adversarial(requests, statements, images, seed, progress)
    neutral = round_robin(pools["eval_toxigen_neutral"], caps["benign_toxigen_neutral"])
    benign = _benign(neutral, figstep_benign.items, images, seed, progress)

    calib_items = (
        round_robin(pools["calib_toxigen_hate"], caps["calibration_toxigen_hate"])
        + round_robin(pools["calib_toxigen_neutral"], caps["calibration_toxigen_neutral"])
        + round_robin(pools["calib_davidson_toxic"], caps["calibration_davidson_toxic"])
        + round_robin(pools["calib_davidson_neither"], caps["calibration_davidson_neither"])
    )
    calibration = _continuation_rows("calibration", calib_items, images, seed, progress)

    extra_by_split = _extra_rows(extra_items)
    rows_by_split = {
        "standard": standard + extra_by_split["standard"],
        "adversarial": adversarial + extra_by_split["adversarial"],
        "benign": benign + extra_by_split["benign"],
        "calibration": calibration + extra_by_split["calibration"],
    }
    rows_by_split["calibration"], calib_dupes = dedupe_rows(rows_by_split["calibration"])
    eval_rows = [r for split in EVAL_SPLITS for r in rows_by_split[split]]
    rows_by_split["calibration"], disjoint = enforce_disjoint(rows_by_split["calibration"], eval_rows)

    ids = Counter(r["id"] for split in SPLITS for r in rows_by_split[split])
    duplicate_ids = sorted(i for i, n in ids.items() if n > 1)
    if duplicate_ids:  # a builder bug, not a user error
        raise RuntimeError(f"duplicate row ids: {duplicate_ids[:5]}")
    for split in SPLITS:
        for r in rows_by_split[split]:
            _check_question_length(r["question"], f"item {r['id']} (source {r['source']})")
            assert r["category"] in taxonomy.CATEGORIES and r["attack"] in attacks.attack_labels(), r["id"]

    # ---- write (staged in a temp folder inside OUT, then moved into place file by file)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".build-data-", dir=out_dir))
    outputs: dict[str, dict] = {}
    try:
        for split in _progress(SPLITS, "writing parquet", progress):
            rows = rows_by_split[split]
            ds = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=FEATURES)
            target = stage / f"{split}.parquet"
            with _quiet_datasets(not progress):
                ds.to_parquet(str(target))
            outputs[split] = {"rows": len(rows), "sha256": sha256_file(target)}

        sheet = _datasheet(
            seed=seed,
            caps=caps,
            rows_by_split=rows_by_split,
            outputs=outputs,
            input_hashes=input_hashes,
            results={
                "figstep": [figstep, figstep_benign],
                "mm-safetybench": [mmsb],
                "toxigen": [toxigen],
                "davidson": [davidson],
                "rtp-bad-words": [bad_words_result],
            },
            extra_result=extra_result,
            disjoint=disjoint,
            calib_dupes=calib_dupes,
            bad_words=_bad_word_audit(rows_by_split["benign"], bad_words),
            manifest_check=manifest_check,
            requests=requests,
            statements=statements,
        )
        write_json_atomic(stage / "datasheet.json", sheet)
        (stage / "DATASHEET.md").write_text(_markdown(sheet), encoding="utf-8")
        # Remove the old datasheet first: a folder whose datasheet is missing is visibly incomplete.
        (out_dir / "datasheet.json").unlink(missing_ok=True)
        for name in [f"{s}.parquet" for s in SPLITS] + ["DATASHEET.md", "datasheet.json"]:
            os.chmod(stage / name, umask_mode())  # staged files may be private; built data gets the umask's mode
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    write_hub_layout(out_dir, sheet)  # data/<split>-*.parquet + README.md: the Hugging Face dataset layout
    say(f"built in {time.monotonic() - started:.1f}s")
    return sheet


def _datasheet(
    *,
    seed,
    caps,
    rows_by_split,
    outputs,
    input_hashes,
    results,
    extra_result,
    disjoint,
    calib_dupes,
    bad_words,
    manifest_check,
    requests,
    statements,
) -> dict:

    sources: dict[str, dict] = {}
    for name, parts in results.items():
        read: Counter = Counter()
        skipped: Counter = Counter()
        for part in parts:
            read.update(part.read)
            skipped.update(part.skipped)
        info = {k: UPSTREAMS[name][k] for k in ("repo", "commit", "license")}
        info["read"] = dict(sorted(read.items()))
        info["skipped_malformed"] = dict(sorted(skipped.items()))
        info["rows_used"] = {split: sum(r["source"] == name for r in rows_by_split[split]) for split in SPLITS}
        sources[name] = info
    if extra_result is not None:
        sources["extra"] = {
            "repo": "",
            "commit": "",
            "license": "the researcher's own",
            "read": dict(sorted(extra_result.read.items())),
            "skipped_malformed": dict(sorted(extra_result.skipped.items())),
            "rows_used": {split: sum(r["source"] == "extra" for r in rows_by_split[split]) for split in SPLITS},
        }
    sources["mmtoxicqa"] = {
        "repo": "",
        "commit": "",
        "license": "Apache-2.0 (this project)",
        "read": {"harmless_topics": len(HARMLESS_TOPICS)},
        "skipped_malformed": {},
        "rows_used": {split: sum(r["source"] == "mmtoxicqa" for r in rows_by_split[split]) for split in SPLITS},
    }

    toxigen_read = results["toxigen"][0].read
    return {
        "name": "MM-TOXIC-QA",
        "builder_version": BUILDER_VERSION,
        "mmtoxicqa_version": __version__,
        "seed": seed,
        "schema": {name: str(feature.dtype if hasattr(feature, "dtype") else type(feature).__name__) for name, feature in FEATURES.items()},
        "taxonomy": list(taxonomy.CATEGORIES),
        "attacks": list(attacks.attack_labels()),
        "caps": dict(caps),
        "counts": _counts(rows_by_split),
        "outputs": outputs,
        "sources": sources,
        "toxigen_groups": {
            "hate": [g for g in taxonomy.TOXIGEN_HATE_GROUPS if toxigen_read.get(f"lines:hate_{g}", 0) > 0],
            "neutral": [g for g in taxonomy.TOXIGEN_NEUTRAL_GROUPS if toxigen_read.get(f"lines:neutral_{g}", 0) > 0],
        },
        "adversarial_requests": {
            "count": len(requests),
            "by_source": dict(sorted(Counter(i.source for i in requests).items())),
            "figstep_own_images_used": sum(i.image is not None for i in requests if i.source == "figstep"),
            "toxic_continuation_statements": dict(sorted(Counter(i.source for i in statements).items())),
        },
        "disjointness": disjoint,
        "calibration_duplicates_dropped": calib_dupes,
        "bad_words": bad_words,
        "input_files": dict(sorted(input_hashes.items())),
        "manifest_check": manifest_check,
    }


def _manifest_check(input_hashes: dict[str, str], manifest: dict | None, downloaded: bool) -> dict:
    """The source files read compared with the pinned manifest (what the datasheet records).

    ``differing`` / ``not_in_manifest`` list at most 50 paths; ``differing_sha256`` gives, for
    every differing file, the pinned (``expected``) and the read (``actual``) sha256."""
    if manifest is None:
        try:
            manifest = load_manifest()
        except MMToxError:
            manifest = {"files": []}
    pinned = {e["path"]: e["sha256"] for e in manifest["files"]}
    source_files = {k: v for k, v in input_hashes.items() if not k.startswith("extra/")}
    differing = sorted(k for k, v in source_files.items() if k in pinned and pinned[k] != v)
    unpinned = sorted(k for k in source_files if k not in pinned)
    matching = len(source_files) - len(differing) - len(unpinned)
    if downloaded:
        summary = f"Downloaded from the pinned upstream commits; all {matching} files verified against the manifest."
    elif not differing and not unpinned:
        summary = f"All {matching} source files match the pinned sha256 values of the manifest."
    else:
        summary = (
            f"{matching} source files match the pinned manifest; {len(differing)} differ and "
            f"{len(unpinned)} are not in it (a local or modified copy was used)."
        )
    return {
        "downloaded": downloaded,
        "matching": matching,
        "differing": differing[:50],
        "differing_sha256": {k: {"expected": pinned[k], "actual": source_files[k]} for k in differing},
        "not_in_manifest": unpinned[:50],
        "not_in_manifest_count": len(unpinned),
        "summary": summary,
    }


MAX_FILE_WARNINGS = 10


def _manifest_warnings(check: dict) -> list[str]:
    """Console warnings for source files that are not the pinned upstream versions."""
    lines = []
    differing = check["differing_sha256"]
    for rel, pair in list(differing.items())[:MAX_FILE_WARNINGS]:
        lines.append(
            f"source file {rel} is not the pinned upstream version: expected sha256 {pair['expected']}, got {pair['actual']}; "
            "the built data will differ from the published benchmark"
        )
    if len(differing) > MAX_FILE_WARNINGS:
        lines.append(f"... and {len(differing) - MAX_FILE_WARNINGS} more source files differ from the manifest (all in datasheet.json)")
    if check["not_in_manifest_count"]:
        lines.append(f"{check['not_in_manifest_count']} source file(s) read are not in the pinned manifest (listed in datasheet.json)")
    return lines


def _warn_stderr(message: str) -> None:

    print(f"build-data: warning: {message}", file=sys.stderr)
