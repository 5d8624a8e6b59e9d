"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.sgm.calibration`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.paths import cache_dir
from mmtoxicqa.modeling.loading import load_model
from mmtoxicqa.modeling.placement import LOAD_OPTIONS, parse_device_map
from mmtoxicqa.modeling.positions import TOKEN_SCOPES
from mmtoxicqa.sgm.calibration import calibrate
from mmtoxicqa.sgm.glasses import Glasses
from mmtoxicqa.sgm.memory import check_auroc_device
from mmtoxicqa.sgm.shards import init_from_env


def add_cli(subparsers) -> None:

    parser = subparsers.add_parser(
        "calibrate",
        help=help_for("calibrate"),
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
    parser.add_argument(
        "--no-resume-shards",
        dest="resume",
        action="store_false",
        help="write no per-batch partial results (saves their disk space, about the pooled matrix's size; an interrupted run starts over)",
    )
    parser.add_argument(
        "--pool-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the pooled items x neurons matrix (half the memory in float16/bfloat16; lossless in bfloat16 for a bfloat16 "
        "model with max pooling; recorded in the glasses)",
    )
    parser.add_argument(
        "--auroc-device",
        default=None,
        help="device that computes the AUROCs, one block of neurons at a time (e.g. cpu, cuda:1; default: where the model computes)",
    )
    parser.add_argument("--auroc-block", type=int, default=None, help="neurons per AUROC block (default: about 4M pooled values per block)")
    parser.set_defaults(func=_cli_calibrate)

    show = subparsers.add_parser(
        "glasses",
        help=help_for("glasses"),
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


def _cli_calibrate(args) -> int:

    check_auroc_device(args.auroc_device)  # before the model loads
    if args.auroc_block is not None and args.auroc_block < 1:
        raise MMToxError(f"--auroc-block {args.auroc_block} must be a positive number of neurons")
    group, args.device, created = init_from_env(args.device)  # under accelerate launch / torchrun: one shard of the items each
    if group.parallel and isinstance(parse_device_map(args.device_map), str):
        raise MMToxError(
            f"--device-map {args.device_map} spreads one copy of the model over every GPU, but {group.world} processes were launched; "
            "run one process for model parallel, or drop --device-map for data parallel"
        )
    try:
        return _calibrate_command(args, group)
    finally:
        if created:
            import torch.distributed as dist  # heavy: torch loads only where a model runs

            dist.destroy_process_group()


def _calibrate_command(args, group) -> int:

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
        pool_dtype=args.pool_dtype,
        auroc_device=args.auroc_device,
        auroc_chunk=args.auroc_block,
        resume=args.resume,
        out=out,
    )
    if group.main:  # calibrate wrote --out (rank 0 only, atomically) and removed the resume folder
        print(glasses.summary_text())
        print(f"wrote {out} in {time.perf_counter() - start:.1f}s" + (f" ({group.world} processes)" if group.parallel else ""))
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
