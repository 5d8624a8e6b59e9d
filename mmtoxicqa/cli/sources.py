"""``mmtoxicqa`` subcommands of :mod:`mmtoxicqa.data.sources`: argparse and the calls into the library, nothing else."""

from __future__ import annotations

from pathlib import Path

from mmtoxicqa.cli.commands import help_for
from mmtoxicqa.core import paths
from mmtoxicqa.data.sources import WORKERS, download_sources, load_manifest


def add_cli(subparsers):
    parser = subparsers.add_parser(
        "download-sources",
        help=help_for("download-sources"),
        description="Download the public source files named in the packaged source manifest (pinned upstream commits, "
        "sha256 of each file), several at a time, with retries; a finished file whose hash matches is not fetched "
        "again. `mmtoxicqa build-data` reads them from there. Exit 2 if any file failed, naming it.",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="where to put them (default: the cache's sources/, what build-data uses)"
    )
    parser.add_argument("--manifest", metavar="FILE", default=None, help="another source manifest (default: the packaged one)")
    parser.add_argument("--workers", type=int, default=WORKERS, help=f"files at once (default: {WORKERS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli)
    return parser


def _cli(args) -> int:

    dest = Path(args.out).expanduser() if args.out else paths.cache_dir() / "sources"
    manifest = load_manifest(args.manifest)
    download_sources(dest, manifest, progress=not args.quiet, workers=args.workers)
    print(f"{len(manifest['files'])} source files verified in {dest}; build with `mmtoxicqa build-data --sources {dest}`")
    return 0
