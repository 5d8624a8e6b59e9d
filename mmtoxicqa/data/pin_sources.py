"""Maintainers: ``python -m mmtoxicqa.data.pin_sources DIR`` re-pins the source manifest from a verified copy.

Its own module because it needs both the manifest code (sources) and the list of files the
loaders read (loaders), and loaders already import sources.
"""

from __future__ import annotations

import argparse

from mmtoxicqa.data.loaders import expected_source_files
from mmtoxicqa.data.sources import MANIFEST_PATH, make_manifest, write_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmtoxicqa.data.pin_sources", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder with the source files (layout of ../shared/data)")
    args = parser.parse_args(argv)
    manifest = make_manifest(args.root, expected_source_files())
    write_manifest(manifest, MANIFEST_PATH)
    print(f"wrote {len(manifest['files'])} entries to {MANIFEST_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
