"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.modeling.reader`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.modeling.reader import OcrReader, image_slot


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "read-image",
        help=help_for("read-image"),
        description="Print, for each image, the text that the reading model (pretrained=embedded-ocr) reads in it "
        "with RapidOCR and puts in the image's place in the chat: exactly what its decoder sees of the image. "
        "Results are cached by the image's pixels.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--no-cache", action="store_true", help=f"read again instead of using {cache_dir() / 'ocr'}")
    parser.set_defaults(func=_cli_read)


def _cli_read(args) -> int:
    reader = OcrReader(use_cache=not args.no_cache)
    for name in args.images:
        if not Path(name).is_file():
            raise MMToxError(f"{name}: no such file")
        print(f"{name}: {image_slot(reader.read(name, name))}")
    return 0
