"""One exception type for every user-facing failure.

Its message is a single line that names the culprit (file, argument, doc id)
and the fix, so a researcher never has to read a deep library traceback.
"""

import errno


class MMToxError(Exception):
    """A user-facing error whose message is one line: what is wrong and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def yes_no(value, what: str) -> bool:
    """An option's yes/no (``sgm_placebo=1``, ``image=0``): 1/true/yes/on or 0/false/no/off, else one line."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", "", "none"):
        return False
    raise MMToxError(f"{what}={value!r} is not a yes/no value; use 1 or 0")


# What to do about the OS faults a write can meet (full disk, no permission, no such folder).
_OS_FIXES = {
    "ENOSPC": "free disk space or write to another disk",
    "EDQUOT": "free space within your disk quota or write elsewhere",
    "EROFS": "the file system is read-only: write to a writable folder",
    "EACCES": "you may not write there: choose a folder you can write to, or fix its permissions",
    "EPERM": "you may not write there: choose a folder you can write to, or fix its permissions",
    "ENOENT": "create the missing folder first, or choose an existing one",
    "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
    "EEXIST": "a part of the path is a file, not a folder: choose another path",
}


def os_fault(exc: OSError, where: str | None = None) -> MMToxError:
    """A one-line MMToxError for an OS fault met while writing ``where`` (else the file the OS
    names; a copy's destination before its source): what, the fault, the file, the fix."""

    name = errno.errorcode.get(exc.errno or 0, "")
    path = str(exc.filename2 or exc.filename or "")
    culprit = where or path or "a file"
    detail = exc.strerror or type(exc).__name__
    if path and path != culprit:
        detail += f": {path}"
    fix = _OS_FIXES.get(name, "check the path and the disk, then rerun")
    return MMToxError(f"cannot write {culprit} ({detail}); {fix}")


def is_os_fault(exc: BaseException) -> bool:
    """True for the OS faults :func:`os_fault` has a fix for (full disk, read-only, no permission, no folder)."""

    return isinstance(exc, OSError) and errno.errorcode.get(exc.errno or 0, "") in _OS_FIXES
