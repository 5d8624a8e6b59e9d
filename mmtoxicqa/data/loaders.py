"""One loader per source. Each reads its files through a hash-tracking :class:`SourceDir`,
maps source labels onto the taxonomy, and skips (and counts, by reason) malformed rows.

A missing source file raises one MMToxError naming the file. A whole file in the wrong
format (no expected CSV header, invalid JSON) is also an MMToxError: that is not a
malformed row but a wrong or truncated download.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.hashing import sha256_bytes
from mmtoxicqa.core.image_io import oversized
from mmtoxicqa.data import taxonomy
from mmtoxicqa.data.attacks import Request, attack_labels
from mmtoxicqa.data.dedup import dedup_form
from mmtoxicqa.data.schema import SPLITS
from mmtoxicqa.data.sources import SourceDir

FIGSTEP_QUESTIONS = "figstep/question/safebench.csv"
FIGSTEP_BENIGN = "figstep/question/benign_sentences_without_harmful_phase.csv"
FIGSTEP_IMAGE_DIR = "figstep/images/SafeBench"
MMSB_DIR = "mm-safetybench/processed_questions"
TOXIGEN_DIR = "toxigen/prompts"
DAVIDSON_CSV = "davidson/labeled_data.csv"
BAD_WORDS = "rtp-bad-words/list_of_naughty_and_bad_words.txt"

# FigStep's benign file holds 5 templates per SafeBench category, in category order.
FIGSTEP_BENIGN_PER_CATEGORY = 5


def figstep_image_rel(category_id: int, task_id: int) -> str:
    return f"{FIGSTEP_IMAGE_DIR}/query_ForbidQI_{category_id}_{task_id}_6.png"


def mmsb_rel(scenario: str) -> str:
    return f"{MMSB_DIR}/{scenario}.json"


def toxigen_rel(label: str, group: str) -> str:
    return f"{TOXIGEN_DIR}/{label}_{group}_1k.txt"


TOXIGEN_FILES: tuple[str, ...] = tuple(
    [toxigen_rel("hate", g) for g in taxonomy.TOXIGEN_HATE_GROUPS] + [toxigen_rel("neutral", g) for g in taxonomy.TOXIGEN_NEUTRAL_GROUPS]
)
MMSB_FILES: tuple[str, ...] = tuple(mmsb_rel(s) for s in taxonomy.MMSAFETYBENCH_SCENARIOS)


def expected_source_files() -> list[str]:
    """Every upstream file the builder reads (what the manifest pins)."""
    rels = [FIGSTEP_QUESTIONS, FIGSTEP_BENIGN, DAVIDSON_CSV, BAD_WORDS, *MMSB_FILES, *TOXIGEN_FILES]
    rels += [figstep_image_rel(c, t) for c in taxonomy.FIGSTEP_CATEGORIES for t in range(1, 51)]
    return sorted(rels)


@dataclass
class SourceItem:
    """One usable record from a source."""

    source: str
    key: str  # stable within the source, used in row ids
    category: str
    label: str  # the source's own label (category name, scenario, group, class)
    request: Request
    toxic_label: int = 1
    prompt: str = ""  # the source's own prompt for the item, when it has one (MM-SafetyBench TYPO)
    image: bytes | None = None  # an image shipped by the source (FigStep), already validated


@dataclass
class LoadResult:
    source: str
    items: list[SourceItem] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)  # what was read, e.g. {"rows": 500}
    skipped: Counter = field(default_factory=Counter)  # malformed, by reason
    examples: dict = field(default_factory=dict)  # reason -> the first offending value, when there is one
    lines: dict = field(default_factory=dict)  # reason -> the line of the first item skipped for it (--extra)

    def skip(self, reason: str, n: int = 1, example=None, line: int | None = None) -> None:
        self.skipped[reason] += n
        if example is not None:
            self.examples.setdefault(reason, example)
        if line is not None:
            self.lines.setdefault(reason, line)


def _clean(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def _csv_rows(src: SourceDir, rel: str, required: tuple[str, ...]) -> list[dict]:
    text = src.read_text(rel)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise MMToxError(
            f"source file {rel} lacks the column(s) {', '.join(missing)} (header: {', '.join(h for h in header if h) or 'empty'}); "
            "it is not the expected upstream file, re-download it"
        )
    return list(reader)


def decode_image(data: bytes):
    """Fully decode image bytes; return the PIL image or None if they do not decode."""

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.width < 1 or image.height < 1:
                return None
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# --------------------------------------------------------------------------- FigStep
def load_figstep(src: SourceDir, images: bool = True) -> LoadResult:
    """SafeBench questions (500 = 10 categories x 50) plus FigStep's own typographic images.

    Malformed rows (unknown category id or a name that disagrees with it, bad ids, empty
    question/instruction, duplicate ids) are skipped. Each question's image must exist
    (a missing one is an MMToxError); an image that does not decode is skipped and
    counted (``corrupt_image``) and the item keeps no image, so the builder renders its
    own typographic one instead.
    """
    result = LoadResult("figstep")
    seen: set[tuple[int, int]] = set()
    rows = _csv_rows(src, FIGSTEP_QUESTIONS, ("category_id", "task_id", "category_name", "question", "instruction"))
    for row in rows:
        result.read["questions"] += 1
        if None in row or any(v is None for v in row.values()):
            result.skip("wrong_field_count")
            continue
        try:
            cat_id, task_id = int(row["category_id"]), int(row["task_id"])
        except ValueError:
            result.skip("bad_id")
            continue
        mapped = taxonomy.FIGSTEP_CATEGORIES.get(cat_id)
        if mapped is None or _clean(row["category_name"]).lower() != mapped[0].lower():
            result.skip("unknown_category")
            continue
        question, instruction = _clean(row["question"]), _clean(row["instruction"])
        if not question or not instruction:
            result.skip("empty_text")
            continue
        if (cat_id, task_id) in seen:
            result.skip("duplicate_id")
            continue
        seen.add((cat_id, task_id))
        result.items.append(
            SourceItem(
                source="figstep",
                key=f"{cat_id}-{task_id}",
                category=mapped[1],
                label=mapped[0],
                request=Request(text=question, instruction=instruction, topic=instruction),
            )
        )
    if images:
        for item in result.items:
            cat_id, task_id = (int(x) for x in item.key.split("-"))
            data = src.read_bytes(figstep_image_rel(cat_id, task_id))
            result.read["images"] += 1
            if decode_image(data) is None:
                result.skip("corrupt_image")
                continue
            item.image = data
    return result


def load_figstep_benign(src: SourceDir) -> LoadResult:
    """FigStep's benign list headings ("Steps to make *."): harmful phrase removed.

    They come 5 per SafeBench category in category order, so row ``i`` is filed under
    category ``i // 5 + 1``; rows past the 50th are filed under ``other``.
    """
    result = LoadResult("figstep")
    rows = _csv_rows(src, FIGSTEP_BENIGN, ("sentence",))
    for index, row in enumerate(rows):
        result.read["benign_sentences"] += 1
        sentence = _clean(row.get("sentence"))
        if None in row or not sentence:
            result.skip("empty_or_malformed_benign_sentence")
            continue
        mapped = taxonomy.FIGSTEP_CATEGORIES.get(index // FIGSTEP_BENIGN_PER_CATEGORY + 1)
        result.items.append(
            SourceItem(
                source="figstep",
                key=f"benign-{index}",
                category=mapped[1] if mapped else "other",
                label=mapped[0] if mapped else "benign",
                request=Request(text=sentence, instruction=sentence, topic=sentence),
                toxic_label=0,
            )
        )
    return result


# --------------------------------------------------------------------------- MM-SafetyBench
def load_mmsafetybench(src: SourceDir) -> LoadResult:
    """MM-SafetyBench processed questions: 13 scenario files (1,680 questions).

    Each entry needs a non-empty ``Question`` and ``Key Phrase``; the TYPO prompt is the
    entry's ``Rephrased Question(SD)`` ("The image shows a phrase of ..."), falling back to
    ``Rephrased Question``; an entry with neither is skipped (``missing_field``).
    """
    result = LoadResult("mm-safetybench")
    for scenario, category in taxonomy.MMSAFETYBENCH_SCENARIOS.items():
        rel = mmsb_rel(scenario)
        text = src.read_text(rel)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MMToxError(f"source file {rel} is not valid JSON ({exc.msg} at line {exc.lineno}); re-download it") from exc
        if isinstance(data, list):
            entries = [(str(i), e) for i, e in enumerate(data)]
        elif isinstance(data, dict):
            entries = list(data.items())
        else:
            raise MMToxError(f"source file {rel} holds a JSON {type(data).__name__}, expected an object of questions; re-download it")
        prefix = scenario.split("-", 1)[0]
        seen: set[str] = set()
        for entry_id, entry in entries:
            result.read["questions"] += 1
            if not isinstance(entry, dict):
                result.skip("not_an_object")
                continue
            question = _clean(entry.get("Question")) if isinstance(entry.get("Question"), str) else ""
            phrase = _clean(entry.get("Key Phrase")) if isinstance(entry.get("Key Phrase"), str) else ""
            prompt = ""
            for name in ("Rephrased Question(SD)", "Rephrased Question"):
                if isinstance(entry.get(name), str) and entry[name].strip():
                    prompt = entry[name].strip()
                    break
            if not question or not phrase or not prompt:
                result.skip("missing_field")
                continue
            key = f"{prefix}-{_clean(entry_id)}"
            if key in seen:
                result.skip("duplicate_id")
                continue
            seen.add(key)
            changed = entry.get("Changed Question")
            instruction = _clean(changed) if isinstance(changed, str) and changed.strip() else question
            result.items.append(
                SourceItem(
                    source="mm-safetybench",
                    key=key,
                    category=category,
                    label=scenario,
                    request=Request(text=question, instruction=instruction, topic=phrase),
                    prompt=prompt,
                )
            )
    return result


# --------------------------------------------------------------------------- ToxiGen
_TOXIGEN_SEPARATOR = "\\n-"  # a literal backslash, 'n', dash (not a newline)


def parse_toxigen_line(line: str) -> list[str]:
    """Split one ToxiGen prompt line (``- s1\\n- s2\\n-``) into its statements ([] if malformed)."""
    line = line.strip()
    if not line.startswith("-"):
        return []
    statements = []
    for piece in line.split(_TOXIGEN_SEPARATOR):
        piece = _clean(piece.strip().lstrip("-"))
        if piece:
            statements.append(piece)
    return statements


def load_toxigen(src: SourceDir) -> LoadResult:
    """ToxiGen prompt files: one per (hate|neutral, group). Statements are de-duplicated per file.

    A line that does not start with ``-`` or holds no statement is skipped
    (``malformed_line``). ``read`` counts lines and statements per file so the
    datasheet shows every group was read.
    """
    result = LoadResult("toxigen")
    for label, groups in (("hate", taxonomy.TOXIGEN_HATE_GROUPS), ("neutral", taxonomy.TOXIGEN_NEUTRAL_GROUPS)):
        for group in groups:
            rel = toxigen_rel(label, group)
            text = src.read_text(rel)
            unique: dict[str, None] = {}
            for line in text.splitlines():
                if not line.strip():
                    continue
                result.read["lines"] += 1
                result.read[f"lines:{label}_{group}"] += 1
                statements = parse_toxigen_line(line)
                if not statements:
                    result.skip("malformed_line")
                    continue
                result.read["statements"] += len(statements)
                for s in statements:
                    unique.setdefault(s, None)
            result.read[f"unique:{label}_{group}"] = len(unique)
            for statement in unique:
                result.items.append(
                    SourceItem(
                        source="toxigen",
                        key=f"{label}-{group}-{sha256_bytes(statement.encode('utf-8'))[:12]}",
                        category=taxonomy.TOXIGEN_GROUP_CATEGORY[group],
                        label=f"{label}_{group}",
                        request=Request(text=statement),
                        toxic_label=1 if label == "hate" else 0,
                    )
                )
    return result


# --------------------------------------------------------------------------- Davidson
_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+|www\.\S+")
_RETWEET = re.compile(r"\bRT\s+@user\b\s*:?")


def clean_tweet(text: str) -> str:
    """Unescape HTML entities, drop URLs and retweet markers ("RT @name:"), mask other @mentions as @user."""
    text = html.unescape(text or "")
    text = _URL.sub(" ", text)
    text = _MENTION.sub("@user", text)
    text = _RETWEET.sub(" ", text)
    return _clean(text)


def load_davidson(src: SourceDir) -> LoadResult:
    """Davidson et al. tweets: class 0 hate -> hate, 1 offensive -> harassment, 2 neither -> non-toxic.

    Skipped: wrong field count, a class outside 0/1/2, an empty tweet after cleaning,
    and exact duplicates (after cleaning).
    """
    result = LoadResult("davidson")
    rows = _csv_rows(src, DAVIDSON_CSV, ("class", "tweet"))
    seen: set[str] = set()
    for index, row in enumerate(rows):
        result.read["rows"] += 1
        if None in row or any(v is None for v in row.values()):
            result.skip("wrong_field_count")
            continue
        try:
            cls = int(row["class"])
        except ValueError:
            result.skip("bad_class")
            continue
        if cls not in taxonomy.DAVIDSON_CLASSES:
            result.skip("bad_class")
            continue
        tweet = clean_tweet(row["tweet"])
        if len(tweet) < 3:
            result.skip("empty_text")
            continue
        if tweet in seen:
            result.skip("duplicate_text")
            continue
        seen.add(tweet)
        name, category, toxic = taxonomy.DAVIDSON_CLASSES[cls]
        row_id = _clean(row.get("") or "") or str(index)
        result.read[f"class:{name}"] += 1
        result.items.append(
            SourceItem(
                source="davidson",
                key=f"{name}-{row_id}",
                category=category,
                label=name,
                request=Request(text=tweet),
                toxic_label=toxic,
            )
        )
    return result


# --------------------------------------------------------------------------- bad words
def load_bad_words(src: SourceDir) -> tuple[list[str], LoadResult]:
    """The RealToxicityPrompts bad-words list (not an eval source; used to audit the benign split)."""
    result = LoadResult("rtp-bad-words")
    words: dict[str, None] = {}
    for line in src.read_text(BAD_WORDS).splitlines():
        result.read["lines"] += 1
        word = _clean(line).lower()
        if not word:
            result.skip("empty_line")
            continue
        words.setdefault(word, None)
    result.read["entries"] = len(words)
    return list(words), result


# --------------------------------------------------------------------------- researcher items
@dataclass
class ExtraItem:
    line: int
    split: str
    category: str
    attack: str
    question: str
    request: str
    image_text: str
    toxic_label: int
    image: bytes
    digest: str  # sha256 of the JSON line, for a stable id


def load_extra(path: str | Path) -> tuple[list[ExtraItem], LoadResult, dict[str, str]]:
    """A researcher's own items (JSON Lines), validated like the sources.

    Fields: ``image`` (path, relative to the .jsonl file's folder or absolute), ``question``,
    ``category`` (a taxonomy name); optional ``attack`` (default "none"), ``split``
    (default "standard"), ``toxic_label`` (default 0 for benign, else 1; required for
    calibration), ``request`` (default: the question) and ``image_text`` (default "").

    Policy: an invalid item is skipped and counted by reason, so one bad line does not block
    a build; the datasheet lists the counts and :func:`extra_report` says them on the console.
    A repeated item (same split, question, request, image text and image, compared in their
    normalised form) is kept once; the others are counted as ``duplicate``. A missing .jsonl
    file, a file in which no item is usable, and a string that is not valid Unicode (a lone
    surrogate such as ``"\\ud800"``) are MMToxErrors. Returns (items, result, {file: sha256}
    of everything read).
    """
    path = Path(path)
    result = LoadResult("extra")
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise MMToxError(f"--extra file {path} does not exist; pass the path of a .jsonl file of items") from exc
    except IsADirectoryError as exc:
        raise MMToxError(f"--extra {path} is a directory; pass the path of a .jsonl file of items") from exc
    hashes = {f"extra/{path.name}": sha256_bytes(raw)}
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MMToxError(f"--extra file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON Lines") from exc
    items: list[ExtraItem] = []
    seen: set[tuple] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        result.read["lines"] += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            result.skip("bad_json", line=number)
            continue
        if not isinstance(obj, dict):
            result.skip("not_an_object", line=number)
            continue
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise MMToxError(
                f"--extra file {path} line {number}: a string holds a lone surrogate ({bad}), which is not valid Unicode; "
                "fix that JSON escape (write the character itself or a complete surrogate pair)"
            ) from None
        question = _clean(obj.get("question")) if isinstance(obj.get("question"), str) else ""
        if not question:
            result.skip("empty_question", line=number)
            continue
        category = obj.get("category")
        if category not in taxonomy.CATEGORIES:
            result.skip("unknown_category", example=category, line=number)
            continue
        split = obj.get("split", "standard")
        if split not in SPLITS:
            result.skip("unknown_split", example=split, line=number)
            continue
        attack = obj.get("attack", "none")
        if attack not in attack_labels():
            result.skip("unknown_attack", example=attack, line=number)
            continue
        label = obj.get("toxic_label", None)
        if label is None:
            if split == "calibration":
                result.skip("bad_toxic_label", line=number)
                continue
            label = 0 if split == "benign" else 1
        if isinstance(label, bool) or label not in (0, 1):
            result.skip("bad_toxic_label", line=number)
            continue
        image_field = obj.get("image")
        if not isinstance(image_field, str) or not image_field.strip():
            result.skip("image_missing", line=number)
            continue
        image_path = Path(image_field).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        try:
            data = image_path.read_bytes()
        except OSError:
            result.skip("image_missing", line=number)
            continue
        if decode_image(data) is None:
            size = oversized(data)
            if size:
                result.skip("image_too_large", example=f"{size[0]}×{size[1]}", line=number)
            else:
                result.skip("corrupt_image", line=number)
            continue
        hashes[f"extra/{image_field}"] = sha256_bytes(data)
        request = obj.get("request")
        image_text = obj.get("image_text")
        item = ExtraItem(
            line=number,
            split=split,
            category=category,
            attack=attack,
            question=question,
            request=_clean(request) if isinstance(request, str) and request.strip() else question,
            image_text=_clean(image_text) if isinstance(image_text, str) else "",
            toxic_label=int(label),
            image=data,
            digest=sha256_bytes(line.strip().encode("utf-8")),
        )
        key = (item.split, dedup_form(item.question), dedup_form(item.request), dedup_form(item.image_text), sha256_bytes(data))
        if key in seen:
            result.skip("duplicate", line=number)
            continue
        seen.add(key)
        items.append(item)
    result.read["items"] = len(items)
    if not items:
        reasons = extra_reasons(result)
        raise MMToxError(
            f"--extra file {path}: none of its {result.read['lines']} item(s) is usable"
            + (f" ({reasons})" if reasons else " (it holds no JSON lines)")
            + "; fix the items (format: mmtoxicqa build-data --help)"
        )
    return items, result, hashes


# What each skip reason means, with the accepted values where there is a fixed set.
def _extra_reason_hint(reason: str) -> str:
    hints = {
        "unknown_category": lambda: "category must be one of " + ", ".join(taxonomy.CATEGORIES),
        "unknown_split": lambda: "split must be one of " + ", ".join(SPLITS),
        "unknown_attack": lambda: "attack must be one of " + ", ".join(attack_labels()),
        "bad_toxic_label": lambda: "toxic_label must be 0 or 1, and is required for calibration items",
        "duplicate": lambda: "the same split, question, request, image text and image as an earlier item; kept once",
        "image_missing": lambda: "the image file is missing (paths are relative to the .jsonl file)",
        "corrupt_image": lambda: "the image does not decode",
        "image_too_large": lambda: "the image is too large (width x height over PIL's decompression-bomb limit); downscale it",
        "empty_question": lambda: "no question",
        "bad_json": lambda: "not valid JSON",
        "not_an_object": lambda: "not a JSON object",
    }
    return hints[reason]() if reason in hints else ""


def extra_reasons(result: LoadResult) -> str:
    """The skipped --extra items by reason, with what was wrong and what is accepted (one line)."""
    parts = []
    for reason, n in sorted(result.skipped.items()):
        seen = result.examples.get(reason)
        line = result.lines.get(reason)
        hint = _extra_reason_hint(reason)
        where = f"first at line {line}" if line is not None else ""
        detail = "; ".join(x for x in (where, (f"e.g. {repr(seen)[:40]}" if seen is not None else ""), hint) if x)
        parts.append(f"{n} {reason}" + (f" [{detail}]" if detail else ""))
    return ", ".join(parts)


def extra_report(result: LoadResult) -> str | None:
    """One console line saying how many --extra items were dropped and why, or None when none was."""
    dropped = sum(result.skipped.values())
    if not dropped:
        return None
    return f"{dropped} of {result.read['lines']} --extra item(s) dropped: {extra_reasons(result)} (counts in datasheet.json)"
