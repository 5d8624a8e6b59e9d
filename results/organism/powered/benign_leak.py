"""Where do the extra harmful benign answers come from? (issue #22: the benign harm that answer-scope SGM adds)

Reads the study's full sweep cells under ``out/`` (the committed cells keep no answer text) and, for every row's
benign cell, describes the answers that the row made harmful and vanilla did not ("caused"):

* ``vanilla_refused``: how many of those items vanilla had refused (the project's refusal detector);
* ``learned_vocabulary``: how many caused answers use a word of the organism's learned toxic vocabulary, defined
  before looking at any method row as the bad-words-list entries that occur in at least ``--min-answers`` of
  vanilla's harmful answers on the targeted items;
* ``families``: which benign item family they fall in (FigStep-style masked list requests, ToxiGen neutral
  statements about a group, the hand-written benign questions);
* ``largest_identical``: the size of the largest group of caused answers that are the same text (a collapse to one
  memorised reply shows up here).

Only counts leave this script; no answer text is written.

Usage (repo root; seconds):
  .venv/bin/python results/organism/powered/benign_leak.py --cells out/organism/powered/cells \
      --organism organism --targeted mm_toxic_qa_organism --bad-words ../shared/data/rtp-bad-words/list_of_naughty_and_bad_words.txt \
      --out results/organism/powered/benign_leak.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.metrics.refusal_phrases import is_refusal
from mmtoxicqa.study.organism_report import read_cells
from mmtoxicqa.study.sweep import row_name

BENIGN = "mm_toxic_qa_benign"
WORD = re.compile(r"[a-z]+")


def rows_of(cells: list[dict], organism: str, task: str) -> dict[str, dict]:
    """Row name (as the study's reports name it) -> the cell's items, for one organism and task."""
    rows = {}
    for cell in cells:
        if cell.get("model") == organism and cell.get("task") == task:
            if not any("answer" in item for item in cell["items"].values()):
                raise SystemExit(f"the {row_name(cell)} cell on {task} keeps no answers (text-free); pass the study's cells under out/")
            rows[row_name(cell)] = cell["items"]
    if "vanilla" not in rows:
        raise SystemExit(f"no vanilla cell for {organism} on {task} among the cells given")
    return rows


def words(text: str | None) -> set[str]:
    return set(WORD.findall((text or "").lower()))


def learned_vocabulary(targeted: dict, bad_words: set[str], min_answers: int) -> list[str]:
    counts = Counter(w for item in targeted.values() if item["harmful"] for w in words(item["answer"]) & bad_words)
    return sorted(w for w, n in counts.items() if n >= min_answers)


def family(item_id: str) -> str:
    for name in ("figstep", "toxigen", "mmtoxicqa"):
        if item_id.startswith(f"benign-{name}"):
            return name
    return "other"


def describe(row: dict, vanilla: dict, vocabulary: set[str]) -> dict:
    caused = [k for k in vanilla if row[k]["harmful"] and not vanilla[k]["harmful"]]
    same = Counter(" ".join(str(row[k]["answer"]).split()) for k in caused)
    return {
        "harmful": sum(item["harmful"] for item in row.values()),
        "caused": len(caused),
        "removed": sum(1 for k in vanilla if vanilla[k]["harmful"] and not row[k]["harmful"]),
        "vanilla_refused": sum(is_refusal(vanilla[k]["answer"]) for k in caused),
        "learned_vocabulary": sum(bool(words(row[k]["answer"]) & vocabulary) for k in caused),
        "families": dict(sorted(Counter(family(k) for k in caused).items())),
        "largest_identical": max(same.values(), default=0),
        "refusal": round(sum(is_refusal(item["answer"]) for item in row.values()) / len(row), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=Path, required=True, help="the study's full cells (under out/)")
    parser.add_argument("--organism", required=True, help="the cells' model name (organism, organism-corpus, ...)")
    parser.add_argument("--targeted", required=True, help="the targeted task that defines the learned vocabulary")
    parser.add_argument("--bad-words", type=Path, required=True, help="the bad-words list, one entry per line")
    parser.add_argument("--min-answers", type=int, default=3, help="vanilla targeted harmful answers a word needs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bad_words = {line.strip().lower() for line in args.bad_words.read_text().splitlines() if line.strip()}
    cells = read_cells(args.cells)  # the folder is read once; both tasks' rows come from it
    targeted = rows_of(cells, args.organism, args.targeted)["vanilla"]
    vocabulary = learned_vocabulary(targeted, bad_words, args.min_answers)
    benign = rows_of(cells, args.organism, BENIGN)
    vanilla = benign["vanilla"]
    report = {
        "organism": args.organism,
        "targeted": args.targeted,
        "vocabulary_rule": f"bad-words-list entries in >= {args.min_answers} vanilla harmful targeted answers",
        "vocabulary_size": len(vocabulary),
        "items": len(vanilla),
        "families": dict(sorted(Counter(family(k) for k in vanilla).items())),
        "rows": {name: describe(row, vanilla, set(vocabulary)) for name, row in sorted(benign.items())},
    }
    write_json_atomic(args.out, report)
    for name, row in report["rows"].items():
        print(f"{name:18s} {json.dumps(row)}")


if __name__ == "__main__":
    main()
