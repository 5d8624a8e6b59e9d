"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.methods.export`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.methods.export import check_exportable, export_checkpoint

EXPORT_DESCRIPTION = """Fold SGM glasses into a plain Hugging Face checkpoint that vLLM, SGLang, TGI or transformers serve
without hooks or custom code: each dampened neuron's weight column (or gate/up rows, for glasses fitted at
that site) is multiplied by its alpha, and every other tensor, the config, tokenizer and shard layout stay as
they were. The model is never loaded with weights, so it works for checkpoints larger than RAM.

example:
  mmtoxicqa calibrate --model embedded --out g.safetensors
  mmtoxicqa export --glasses g.safetensors --out exported/"""


def add_cli(subparsers) -> None:

    parser = subparsers.add_parser(
        "export",
        help=help_for("export"),
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="local model folder or downloaded hub id (default: the embedded model)")
    parser.add_argument("--glasses", required=True, help="glasses .safetensors file fitted on this model (`mmtoxicqa calibrate`)")
    parser.add_argument("--out", required=True, help="folder to write the exported checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    parser.add_argument("--strength", type=float, default=None, help="re-derive alpha with this strength (default: the glasses')")
    parser.add_argument(
        "--select", default=None, help="re-derive alpha with this narrowing, e.g. 'top_k=500' or 'all' (default: the glasses')"
    )
    parser.add_argument("--revision", default=None, help="hub revision of --model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to build its module tree")
    parser.add_argument(
        "--method",
        default="sgm",
        help="the method spec you evaluated (sgm, aura); one that works at decoding time (sgm_star = sgm+coca, coca, ...) is "
        "refused with what to serve instead",
    )
    parser.set_defaults(func=_cli_export)


def _cli_export(args) -> int:
    start = time.perf_counter()
    check_exportable(args.method)  # before any file is read
    record = export_checkpoint(
        args.model,
        args.glasses,
        args.out,
        overwrite=args.overwrite,
        strength=args.strength,
        select=args.select,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
    )
    changed = record["changed_tensors"]
    files = len({c["file"] for c in changed})
    print(
        f"wrote {Path(args.out).expanduser().resolve()}: {sum(c['dampened'] for c in changed if c['key'].endswith('.weight'))} neurons dampened in {len(changed)} tensors "
        f"({files} of {len(record['weight_files'])} weight files), glasses sha256 {record['glasses']['sha256'][:16]}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    if record["not_copied"]:
        print(f"not copied (weights in other formats would bypass SGM): {', '.join(record['not_copied'])}")
    return 0
