"""Source files: pinned upstream locations, sha256 checks, download, and hash-tracked reading.

``source_manifest.json`` (next to this file) lists every upstream file the builder reads,
as a path relative to the sources folder (the layout of ``../shared/data``), the raw URL
at a pinned commit, and its sha256. ``--sources DIR`` reads a local copy; without it the
files are downloaded into the cache and verified before anything is built.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from mmtoxicqa.core.atomic import atomic_path
from mmtoxicqa.core.errors import MMToxError, is_os_fault, os_fault
from mmtoxicqa.core.hashing import sha256_bytes, sha256_file

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


# Downloads: how many files at once, and how often (and how patiently) a failing one is tried again.
WORKERS = 8
RETRIES = 3  # tries after the first: a dropped connection or a 5xx/429 from the host is usually gone in seconds
BACKOFF_S = 1.0  # waits 1, 2, 4 s (plus up to 25% jitter, so parallel workers do not retry in step)
_RETRIED_HTTP = (408, 425, 429, 500, 502, 503, 504)


class _Refused(Exception):
    """A download that is complete but wrong (its sha256 differs): trying again would not help."""


def _finished(target: Path, expected: str | None) -> bool:
    """A file already in place is finished: only verified downloads are ever renamed onto their
    final name, so without a pinned sha256 being there is enough; with one it must still match."""
    if not target.is_file():
        return False
    return not expected or sha256_file(target) == expected


def _fetch(url: str, target: Path, expected: str | None, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``target``, hashing as it goes; rename it onto
    ``target`` only once it is complete and its sha256 matches (a partial file never looks finished)."""

    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            received = 0
            for block in iter(lambda: response.read(1 << 16), b""):
                digest.update(block)
                out.write(block)
                received += len(block)
            promised = response.headers.get("Content-Length")
        if promised and promised.isdigit() and received != int(promised):  # the host hung up early: read() just ends
            raise http.client.IncompleteRead(b"", int(promised) - received)
        got = digest.hexdigest()
        if expected and got != expected:
            raise _Refused(f"expected {expected}, got {got}")


def _download_one(entry: dict, dest: Path, timeout: float, retries: int, backoff: float) -> tuple[str, str | None]:
    """Fetch one manifest file with retries: ``("kept" | "downloaded" | "failed", one-line reason)``."""

    rel, expected = entry["path"], entry.get("sha256")
    target = dest / rel
    if _finished(target, expected):
        return "kept", None
    url = entry.get("url") or upstream_url(rel)
    reason, tries = "", 0
    for attempt in range(retries + 1):
        tries = attempt + 1
        try:
            _fetch(url, target, expected, timeout)
            return "downloaded", None
        except _Refused as exc:
            return "failed", f"sha256 mismatch for downloaded source file {rel} ({url}): {exc}; refused (not kept)"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if exc.code not in _RETRIED_HTTP:
                break  # 404, 403, ...: the same answer again
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
            reason = f"network unreachable ({getattr(exc, 'reason', None) or exc or type(exc).__name__})"
        except OSError as exc:
            if is_os_fault(exc):  # our side (full disk, no permission): not the network's
                return "failed", f"cannot save source file {rel} from {url}: {os_fault(exc, target)}"
            reason = f"network unreachable ({exc})"
        if attempt < retries:
            time.sleep(backoff * 2**attempt * (1 + random.random() / 4))
    return "failed", f"cannot download source file {rel} from {url}: {reason}" + (f" after {tries} tries" if tries > 1 else "")


def download_sources(
    dest: str | Path,
    manifest: dict | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    workers: int | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    warn=None,
) -> Path:
    """Download every manifest file into ``dest``: ``workers`` at a time, each tried again with
    exponential backoff, sha256-checked where the manifest pins one, resumable (a finished, verified
    file is kept; anything else is fetched again). ``warn`` gets one line per failed file naming its
    URL (default: stderr); then one MMToxError sums them up (``mmtoxicqa`` exits 2)."""

    manifest = manifest if manifest is not None else load_manifest()
    dest = Path(dest)
    workers = WORKERS if workers is None else max(1, int(workers))
    retries = RETRIES if retries is None else max(0, int(retries))
    backoff = BACKOFF_S if backoff is None else float(backoff)
    entries = manifest["files"]
    failures: list[str] = []
    counts = {"kept": 0, "downloaded": 0, "failed": 0}
    with (
        tqdm(total=len(entries), desc="download sources", unit="file", disable=None if progress else True) as bar,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmtoxicqa-download") as pool,
    ):
        say = warn or (lambda line: bar.write(line, file=sys.stderr))
        futures = [pool.submit(_download_one, entry, dest, timeout, retries, backoff) for entry in entries]
        for future in as_completed(futures):
            outcome, line = future.result()
            counts[outcome] += 1
            if line:
                failures.append(line)
                say(line)
            bar.set_postfix(kept=counts["kept"], new=counts["downloaded"], failed=counts["failed"], refresh=False)
            bar.update(1)
    if failures:
        raise MMToxError(
            f"{len(failures)} of {len(entries)} source file(s) could not be downloaded into {dest} (each named above; "
            f"first: {failures[0]}); rerun the same command to resume ({counts['kept'] + counts['downloaded']} finished "
            "file(s) are kept), or use --sources DIR with a local copy of the source data (e.g. --sources ../shared/data)"
        )
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
