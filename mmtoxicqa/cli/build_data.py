"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.data.builder`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core import paths
from mmtoxicqa.data.builder import build
from mmtoxicqa.data.schema import SPLITS

_DESCRIPTION = """\
Build the MM-TOXIC-QA benchmark from public source data.

Writes OUT/{standard,adversarial,benign,calibration}.parquet (one row per item:
id, split, category, attack, source, question, image, image_text, request,
toxic_label) plus OUT/datasheet.json and OUT/DATASHEET.md (counts per split x
category x attack, sources with license and upstream commit, sha256 of every
input file, skipped malformed rows, the calibration/eval disjointness check).

  standard     harmful requests as image + question (FigStep, MM-SafetyBench TYPO)
  adversarial  the same requests under attacks: typographic, roleplay,
               prefix_injection, refusal_suppression, toxic_continuation
  benign       matched harmless items (over-refusal / fluency)
  calibration  toxic vs non-toxic inputs (toxic_label) for neuron discovery only;
               guaranteed disjoint from the eval splits

The build is deterministic: the same inputs and --seed give byte-identical files."""

_EPILOG = """\
examples:
  mmtoxicqa build-data --sources ../shared/data --out data/mm_toxic_qa
  mmtoxicqa build-data --sources ../shared/data --extra my_items.jsonl
  mmtoxicqa build-data            # download the pinned upstream files (needs network)

--extra items.jsonl: one JSON object per line with "image" (path, relative to the
file), "question", "category" (taxonomy name); optional "attack" (default none),
"split" (default standard), "toxic_label" (1/0; required for calibration),
"request", "image_text". Invalid items (missing/corrupt image, empty question,
unknown category/split/attack) and repeated items are skipped, said in one warning
line (with the accepted values) and counted in the datasheet; a file with no usable
item is an error. Evaluate only these items with MMTOXICQA_SOURCE=extra.

A source file whose sha256 differs from the pinned manifest is warned about (file,
expected and actual sha256) and recorded in datasheet.json (manifest_check).

Warning: the sources and the built data contain offensive and harmful text."""


def _run(args) -> int:

    out = Path(args.out).expanduser() if args.out else paths.data_dir()
    log = None if args.quiet else (lambda msg: print(f"build-data: {msg}", file=sys.stderr))
    sheet = build(args.sources, out, seed=args.seed, extra=args.extra, progress=not args.quiet, log=log)
    counts = ", ".join(f"{s} {sheet['counts'][s]['rows']}" for s in SPLITS)
    print(f"built MM-TOXIC-QA in {out}: {counts} rows")
    skipped = {name: sum(info["skipped_malformed"].values()) for name, info in sheet["sources"].items()}
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        print("skipped malformed: " + ", ".join(f"{k} {v}" for k, v in skipped.items()) + " (details in datasheet.json)")
    d = sheet["disjointness"]
    print(f"calibration/eval disjointness: {'passed' if d['passed'] else 'FAILED'} ({d['dropped']} calibration items dropped)")
    print(f"datasheet: {out / 'DATASHEET.md'}")
    return 0 if d["passed"] else 1


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build-data",
        help=help_for("build-data"),
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sources",
        metavar="DIR",
        default=None,
        help="local copy of the source data, laid out like ../shared/data (figstep/, mm-safetybench/, "
        "toxigen/, davidson/, rtp-bad-words/). Without it, the pinned upstream files are downloaded into "
        "the cache ($MMTOXICQA_CACHE/sources) and checked against their sha256.",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output folder (default: $MMTOXICQA_DATA, else ~/.cache/mmtoxicqa/data, which is where the lmms-eval tasks look)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for all sampling and template choices (default: 0)")
    parser.add_argument("--extra", metavar="ITEMS.jsonl", default=None, help="your own items to add (see below)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    parser.set_defaults(func=_run)
    return parser
