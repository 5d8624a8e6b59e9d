"""What the HTTP judges (perspective, llm) share: Retry-After parsing, secret redaction, and the
one-line detail of an HTTP error body (redacted before it is shortened, so no key half survives)."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.error
import urllib.parse
from collections.abc import Callable


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def redact(text: str, secret: str | None) -> str:
    """``text`` on one line, without ``secret`` (raw or URL-quoted)."""
    text = str(text)
    if secret:
        for form in sorted({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return " ".join(text.split())


def error_detail(err: urllib.error.HTTPError, redact_fn: Callable[[str], str], limit: int = 300) -> str:
    """The error message of an HTTP error's body (JSON ``error.message`` / ``error``, else the body,
    else the reason), redacted by ``redact_fn`` and then shortened to ``limit`` characters."""
    try:
        body = err.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001  (a broken body: the status reason is all there is)
        body = ""
    try:
        message = json.loads(body).get("error")
        message = message.get("message") if isinstance(message, dict) else message
    except (ValueError, AttributeError):
        message = None
    return redact_fn(str(message or body or err.reason))[:limit]
