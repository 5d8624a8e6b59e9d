"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.data.hub`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

import argparse

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core import paths
from mmtoxicqa.data.hub import DEFAULT_REPO_ID, push_data


def add_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push-data",
        help=help_for("push-data"),
        description="Upload the folder `mmtoxicqa build-data` wrote (its data/ parquet files, README.md dataset card and "
        "datasheet) to a Hugging Face dataset repository, creating it if needed. Sign in first with huggingface_hub "
        "(HF_TOKEN or `huggingface-cli login`); no token is passed on the command line.",
    )
    parser.add_argument("repo_id", nargs="?", default=DEFAULT_REPO_ID, help=f"dataset repository (default: {DEFAULT_REPO_ID})")
    parser.add_argument("--data", default=None, help="the built folder (default: MMTOXICQA_DATA, else the cache's data/)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.set_defaults(func=_cli)
    return parser


def _cli(args) -> int:

    print(f"pushed: {push_data(args.data or paths.data_dir(), args.repo_id, args.private)}")
    return 0
