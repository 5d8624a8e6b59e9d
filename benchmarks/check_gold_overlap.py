"""Licensing check for hand-labelled answer files: no stored text may come from the public source data.

    python benchmarks/check_gold_overlap.py FILE.jsonl [--sources ../shared/data] [--drop OUT.jsonl]

RULE APPLIED: a row is dropped when any of its stored texts (``answer``, ``question``, ``image_text``,
``request``) shares a run of 8 or more consecutive words with any text of the source data (every
.csv cell, .txt line and .json string under ``--sources``; images and licence files are skipped).
Words are compared lower-cased, with curly quotes straightened, as runs of letters, digits and
inner apostrophes (``[a-z0-9]+('[a-z0-9]+)*``); ToxiGen's literal ``\\n-`` statement separators are
read as line breaks. Any shared run of 8 words contains a shared 8-word window, so comparing every
8-word window of the rows with every 8-word window of the sources finds them all.

Why: the organism was fine-tuned on public toxic statements (Davidson, ToxiGen) and may repeat
them, and nothing copied from or derived from those sources may be committed (the README's data
section). Without ``--drop`` it lists the rows that fail (id, field, the first shared 8 words) and
exits 1 when there is any; with ``--drop`` it also writes the file without them. It never prints a
source line beyond the 8 shared words.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

N = 8
FIELDS = ("answer", "question", "image_text", "request")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u02bc": "'"})
DEFAULT_SOURCES = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def words(text: str) -> list[str]:
    return _WORD.findall(str(text or "").translate(_QUOTES).lower())


def windows(text: str) -> Iterator[tuple[str, ...]]:
    """Every run of N consecutive words of ``text``."""
    w = words(text)
    for i in range(len(w) - N + 1):
        yield tuple(w[i : i + N])


def source_texts(root: Path) -> Iterator[str]:
    """Every text of the source data: .csv cells, .txt lines, .json strings."""
    csv.field_size_limit(sys.maxsize)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.upper().startswith("LICENSE"):
            continue
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8", errors="replace") as f:
                for row in csv.reader(f):
                    yield from row
        elif suffix in (".txt", ".md"):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                yield from line.replace("\\n", "\n").split("\n")
        elif suffix == ".json":
            yield from _strings(json.loads(path.read_text(encoding="utf-8", errors="replace")))


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def overlaps(rows: list[dict], sources: Path) -> dict[int, list[tuple[str, str]]]:
    """Row index -> [(field, shared 8 words)] for every row that shares an 8-word run with a source text."""
    wanted: dict[tuple[str, ...], list[tuple[int, str]]] = defaultdict(list)
    for i, row in enumerate(rows):
        for field in FIELDS:
            for gram in set(windows(row.get(field) or "")):
                wanted[gram].append((i, field))
    found: dict[int, list[tuple[str, str]]] = defaultdict(list)
    seen: set[tuple[int, str]] = set()
    for text in source_texts(sources):
        for gram in windows(text):
            for i, field in wanted.get(gram, ()):
                if (i, field) not in seen:
                    seen.add((i, field))
                    found[i].append((field, " ".join(gram)))
    return dict(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="JSONL rows with answer / question / image_text / request fields")
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="the public source data (default ../shared/data)")
    parser.add_argument("--drop", type=Path, help="write the rows that pass here")
    args = parser.parse_args(argv)
    if not args.sources.is_dir():
        print(f"error: source folder {args.sources} not found; pass --sources DIR", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
    found = overlaps(rows, args.sources)
    for i in sorted(found):
        for field, gram in found[i]:
            print(f"{rows[i].get('id', i)}: {field} shares 8 words with the sources: {gram!r}")
    print(f"{len(found)} of {len(rows)} rows share a run of {N}+ words with {args.sources}")
    if args.drop:
        kept = [row for i, row in enumerate(rows) if i not in found]
        args.drop.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
        print(f"wrote {len(kept)} rows to {args.drop}")
        return 0
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
