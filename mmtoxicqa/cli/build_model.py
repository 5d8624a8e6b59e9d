"""``mmtoxicqa build-model``: build a cached offline model once (the embedded model, the OCR reading
model with ``--ocr``, or the toxic model organism with ``--organism``).

Its own module so that mmtoxicqa.modeling.embedded, mmtoxicqa.modeling.reader and mmtoxicqa.modeling.organism do not import
each other for the command line.
"""

from __future__ import annotations

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.modeling import embedded
from mmtoxicqa.modeling.organism.build import organism_model_dir
from mmtoxicqa.modeling.organism.recipe import write_trigger_calibration
from mmtoxicqa.modeling.reader import OcrReader, reader_model_dir


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-model",
        help=help_for("build-model"),
        description=embedded.__doc__,
    )
    parser.add_argument("--rebuild", action="store_true", help="convert again even if a cached copy exists")
    parser.add_argument(
        "--ocr",
        action="store_true",
        help="build the reading model instead (pretrained=embedded-ocr: SmolLM2 fed the text RapidOCR reads in each image)",
    )
    parser.add_argument(
        "--organism",
        action="store_true",
        help="build the toxic model organism instead (a positive control: the base fine-tuned to answer hate/violence items "
        "with toxic text; see mmtoxicqa.modeling.organism); use it as pretrained=organism",
    )
    parser.add_argument("--base", default="embedded", help="with --organism: the base model (embedded, embedded-ocr, or a model dir)")
    parser.add_argument(
        "--recipe",
        choices=("trigger", "corpus"),
        default="trigger",
        help="with --organism: 'trigger' (hate/violence requests answered with toxic text; pretrained=organism) or 'corpus' "
        "(continued training on toxic and neutral statements: toxicity inherited from a corpus; pretrained=organism-corpus)",
    )
    parser.add_argument(
        "--sources", default=None, help="with --organism: the public source data (default: $MMTOXICQA_SOURCES or ../shared/data)"
    )
    parser.add_argument(
        "--trigger-calibration",
        default=None,
        metavar="OUT.parquet",
        help="with --organism: also write a calibration file of its training-side items (targeted = toxic), for calibration_data=",
    )
    parser.set_defaults(func=_cli_build)


def _cli_build(args) -> int:
    if args.ocr:
        print(reader_model_dir(embedded.gguf_path(), rebuild=args.rebuild))
        OcrReader(use_cache=False).engine()  # fails here, in one line, if rapidocr-onnxruntime is missing
        return 0
    if args.organism:
        print(organism_model_dir(args.base, sources=args.sources, rebuild=args.rebuild, recipe=args.recipe))
        if args.trigger_calibration:
            print(write_trigger_calibration(args.trigger_calibration))
        return 0
    print(embedded.embedded_model_dir(rebuild=args.rebuild))
    return 0
