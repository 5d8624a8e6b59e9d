"""Source files: pinned upstream locations, sha256 checks, download, and hash-tracked reading.

``source_manifest.json`` (next to this file) lists every upstream file the builder reads,
as a path relative to the sources folder (the layout of ``../shared/data``), the raw URL
at a pinned commit, and its sha256. ``--sources DIR`` reads a local copy; without it the
files are downloaded into the cache and verified before anything is built.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from mmtoxicqa.atomic import atomic_path
from mmtoxicqa.errors import MMToxError
from mmtoxicqa.hashing import sha256_bytes, sha256_file

MANIFEST_PATH = Path(__file__).resolve().parent / "source_manifest.json"

# Upstream repository, commit, license and the folder mapping (local prefix -> upstream prefix).
UPSTREAMS: dict[str, dict[str, str]] = {
    "figstep": {
        "repo": "ThuCCSLab/FigStep",
        "commit": "0861b17b3d67887c06ee3534ec65b3012f9becb7",
        "license": "MIT",
        "local_prefix": "figstep/",
        "upstream_prefix": "data/",
    },
    "mm-safetybench": {
        "repo": "dut-laowang/ml-aura-vl",
        "commit": "db530e23ef480b0881f49ee5db431987d2f8114f",
        "license": "CC BY-NC 4.0 (research, non-commercial)",
        "local_prefix": "mm-safetybench/",
        "upstream_prefix": "MM-SafetyBench/",
    },
    "toxigen": {
        "repo": "microsoft/TOXIGEN",
        "commit": "01517e814639e0334c920a3c502036c8158aac87",
        "license": "MIT",
        "local_prefix": "toxigen/",
        "upstream_prefix": "",
    },
    "davidson": {
        "repo": "t-davidson/hate-speech-and-offensive-language",
        "commit": "cb50f7e9eb855a99abc51423bf40df0e26d6fe30",
        "license": "MIT",
        "local_prefix": "davidson/",
        "upstream_prefix": "data/",
    },
    "rtp-bad-words": {
        "repo": "allenai/real-toxicity-prompts",
        "commit": "dd44ab77ed8bb36d6a62f8205768fda8382eb7ba",
        "license": "Apache-2.0",
        "local_prefix": "rtp-bad-words/",
        "upstream_prefix": "data/",
    },
}


def source_of(rel: str) -> str:
    for name, info in UPSTREAMS.items():
        if rel.startswith(info["local_prefix"]):
            return name
    raise ValueError(f"{rel} is in no known source folder")


def upstream_url(rel: str) -> str:
    """The raw-file URL of local path ``rel`` at its source's pinned commit."""
    info = UPSTREAMS[source_of(rel)]
    upstream_path = info["upstream_prefix"] + rel[len(info["local_prefix"]) :]
    return f"https://raw.githubusercontent.com/{info['repo']}/{info['commit']}/{upstream_path}"


# --------------------------------------------------------------------------- manifest
def load_manifest(path: str | Path | None = None) -> dict:
    path = Path(path) if path else MANIFEST_PATH
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MMToxError(f"source manifest {path} is missing; reinstall mmtoxicqa or pass --sources DIR") from exc
    except json.JSONDecodeError as exc:
        raise MMToxError(f"source manifest {path} is not valid JSON ({exc.msg} at line {exc.lineno}); reinstall mmtoxicqa") from exc
    if not isinstance(manifest.get("files"), list):
        raise MMToxError(f"source manifest {path} has no 'files' list; reinstall mmtoxicqa")
    return manifest


def make_manifest(root: str | Path, rels: Iterable[str]) -> dict:
    """Build a manifest for files ``rels`` under ``root`` (maintainers: refresh after re-pinning)."""
    root = Path(root)
    files = []
    for rel in sorted(set(rels)):
        files.append({"path": rel, "url": upstream_url(rel), "sha256": sha256_file(root / rel)})
    sources = {name: {k: info[k] for k in ("repo", "commit", "license")} for name, info in sorted(UPSTREAMS.items())}
    return {"manifest_version": 1, "sources": sources, "files": files}


def write_manifest(manifest: dict, path: str | Path = MANIFEST_PATH) -> None:
    """Write ``manifest`` as JSON with one file entry per line (reviewable diffs)."""
    head = {k: v for k, v in manifest.items() if k != "files"}
    body = json.dumps(head, indent=2, sort_keys=True)[:-2]
    entries = ",\n".join("    " + json.dumps(e, sort_keys=True) for e in manifest["files"])
    text = body + ',\n  "files": [\n' + entries + "\n  ]\n}\n"
    json.loads(text)  # must round-trip
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def verify_file(path: str | Path, expected: str, name: str | None = None) -> str:
    """Return the sha256 of ``path``; raise a one-line MMToxError if it differs from ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise MMToxError(f"source file {name or path} is missing at {path}; pass --sources DIR with a complete copy")
    got = sha256_file(path)
    if got != expected:
        raise MMToxError(
            f"sha256 mismatch for source file {name or path}: expected {expected}, got {got}; "
            "the file is not the pinned upstream version, refusing to build (delete it and download again, "
            "or pass --sources DIR)"
        )
    return got


def verify_sources(root: str | Path, manifest: dict | None = None) -> int:
    """Check every manifest file under ``root`` against its sha256; return how many were checked."""
    manifest = manifest if manifest is not None else load_manifest()
    root = Path(root)
    for entry in manifest["files"]:
        verify_file(root / entry["path"], entry["sha256"], entry["path"])
    return len(manifest["files"])


def download_sources(dest: str | Path, manifest: dict | None = None, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download every manifest file into ``dest`` (skipping ones already there and verified).

    Fails with one line when the network is unreachable, and refuses a file whose sha256
    differs from the manifest (the partial download is not kept).
    """
    from tqdm.auto import tqdm

    manifest = manifest if manifest is not None else load_manifest()
    dest = Path(dest)
    for entry in tqdm(manifest["files"], desc="download sources", unit="file", disable=None if progress else True):
        rel, expected = entry["path"], entry["sha256"]
        target = dest / rel
        if target.is_file() and sha256_file(target) == expected:
            continue
        url = entry.get("url") or upstream_url(rel)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise MMToxError(
                f"cannot download source file {rel} from {url}: HTTP {exc.code}; pass --sources DIR with a local copy"
            ) from exc
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MMToxError(
                f"cannot download source file {rel} from {url}: network unreachable ({reason}); "
                "use --sources DIR with a local copy of the source data (e.g. --sources ../shared/data)"
            ) from exc
        got = sha256_bytes(data)
        if got != expected:
            raise MMToxError(f"sha256 mismatch for downloaded source file {rel} ({url}): expected {expected}, got {got}; refusing to build")
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return dest


def copy_sources(src: str | Path, dest: str | Path, manifest: dict) -> None:
    """Copy the manifest files from ``src`` to ``dest`` (used by tests and offline mirroring)."""
    for entry in manifest["files"]:
        target = Path(dest) / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(src) / entry["path"], target)


# --------------------------------------------------------------------------- reading
class SourceDir:
    """A sources folder whose reads are hash-tracked: every file read is recorded with its sha256."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hashes: dict[str, str] = {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        path = self.path(rel)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise MMToxError(
                f"source file {rel} is missing (looked for {path}); point --sources at a complete copy "
                "of the source data (layout as in ../shared/data) or omit --sources to download it"
            ) from exc
        except IsADirectoryError as exc:
            raise MMToxError(f"source file {rel} is a directory at {path}; expected a file") from exc
        self.hashes[rel] = sha256_bytes(data)
        return data

    def read_text(self, rel: str) -> str:
        data = self.read_bytes(rel)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise MMToxError(f"source file {rel} is not UTF-8 text (byte {exc.start}); re-download it") from exc
