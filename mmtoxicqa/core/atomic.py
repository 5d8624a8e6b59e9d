"""Atomic writes: a killed process never leaves a half-written file or directory behind.

A folder is written to ``.NAME.HOST-PID-XXXX.tmp`` beside it (HOST: a short hash of this
machine's name); the next ``atomic_dir`` for the same target removes the temporaries whose
process is gone (``kill -9``), on this machine only. Replacing a folder renames the old one aside
(``.NAME.HOST-PID-old.tmp``), renames the new one in, then deletes the old one; a kill between the
two renames is repaired on the next start by renaming the old folder back.

The temporary file (``mkstemp``) and folder (``mkdtemp``) are private (0600 / 0700) while
they are written; before the rename they get the permissions any ordinary ``open`` /
``mkdir`` would give under the process umask (e.g. 0644 / 0755 with umask 022), so outputs
and shared caches are readable by whoever the umask allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:6]


def _temporaries(target: Path) -> Iterator[tuple[Path, int, bool]]:
    """This machine's temporaries of ``target``: (path, owning pid, is the old folder set aside)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{_host()}-(\d+)-(old|[A-Za-z0-9_]+)\.tmp$")
    with contextlib.suppress(OSError):
        for path in target.parent.iterdir():
            match = pattern.match(path.name)
            if match:
                yield path, int(match.group(1)), match.group(2) == "old"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove ``target``'s temporaries left by killed processes of this machine; a folder set aside
    by a replacement that was killed half-way is renamed back when ``target`` is missing."""
    target = Path(target)
    removed = []
    for path, pid, old in sorted(_temporaries(target), key=lambda t: not t[2]):
        if _alive(pid):
            continue
        if old and not target.exists():
            os.replace(path, target)
            log.warning("restored %s from %s (a replacement was killed half-way)", target, path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.warning("removed %d temporary folder(s) of %s left by a killed process", len(removed), target)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; rename it onto ``target`` on success
    (an existing ``target`` is renamed aside first and deleted last: one complete folder always exists)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    owner = f".{target.name}.{_host()}-{os.getpid()}-"
    tmp_path = Path(tempfile.mkdtemp(prefix=owner, suffix=".tmp", dir=target.parent))
    try:
        yield tmp_path
        os.chmod(tmp_path, umask_mode(directory=True))
        aside = target.parent / f"{owner}old.tmp"
        if target.exists():
            os.replace(target, aside)
        try:
            os.replace(tmp_path, target)
        except BaseException:
            if aside.exists() and not target.exists():
                os.replace(aside, target)
            raise
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        elif aside.exists() or aside.is_symlink():
            aside.unlink()
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


def write_json_atomic(target: str | os.PathLike, obj) -> None:
    """Write ``obj`` as pretty JSON to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
