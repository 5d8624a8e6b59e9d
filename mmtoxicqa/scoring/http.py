"""What the HTTP judges (perspective, llm, harmbench) share: Retry-After parsing, secret redaction
(every encoding of a secret this code can produce), URL credentials, a whole-request deadline, and
the one-line detail of an HTTP error body (redacted before it is shortened, so no key half survives)."""

from __future__ import annotations

import base64
import email.utils
import functools
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable


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


def secret_forms(secrets: Iterable[str | None], user: str | None = None) -> list[str]:
    """Every text a secret can appear as in a reply: raw, ``quote`` (default and ``safe=''``),
    ``quote_plus``, base64 (standard and URL-safe, with and without padding) of the secret and of
    ``user:secret`` (HTTP basic auth). Longest first, so a longer form is replaced before its parts."""
    forms: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        plain = {secret, urllib.parse.quote(secret), urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        for text in [secret] + ([f"{user}:{secret}"] if user else []):
            raw = text.encode("utf-8")
            for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
                plain.update({encoded.decode("ascii"), encoded.decode("ascii").rstrip("=")})
        forms.update(f for f in plain if len(f) >= 4)  # a 1-3 character "secret" would blank ordinary text
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secret: str | None | Iterable[str | None], user: str | None = None) -> str:
    """``text`` on one line, without ``secret`` (one or several) in any form of :func:`secret_forms`."""
    text = str(text)
    secrets = [secret] if secret is None or isinstance(secret, str) else list(secret)
    for form in secret_forms(secrets, user):
        text = text.replace(form, "***")
    return " ".join(text.split())


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user:password@, user, password)``; user and password are unquoted (None when absent)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    stripped = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return stripped, urllib.parse.unquote(user) or None, urllib.parse.unquote(password) if sep else None


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class DeadlineExceeded(TimeoutError):
    """The whole request (connect, headers and body) took longer than its deadline."""


class _Deadline:
    """Shuts the request's sockets down when the deadline passes: a reply trickled one byte at a
    time defeats a per-read socket timeout, not this."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watched:
    """A connection whose socket the request's deadline shuts down."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self):
        super().connect()
        self._deadline.watch(self.sock)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req, context=self._context)


def post_with_deadline(
    request: urllib.request.Request, deadline_s: float, on_error: Callable[[urllib.error.HTTPError], object] | None = None
):
    """POST ``request`` and read the whole reply body within ``deadline_s`` seconds (also the socket
    timeout). Raises :class:`DeadlineExceeded` when the deadline passes, ``urllib.error.HTTPError``
    for an error status (its body is read by ``on_error`` inside the deadline and kept as ``err.detail``),
    and the usual ``URLError``/``OSError``/``http.client.HTTPException`` for transport faults."""
    deadline = _Deadline(deadline_s)
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
    try:
        try:
            with opener.open(request, timeout=deadline_s) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            err.detail = on_error(err) if on_error else None
            if deadline.expired:
                raise DeadlineExceeded(deadline_s) from None
            raise
        except (OSError, http.client.HTTPException):
            if deadline.expired:
                raise DeadlineExceeded(deadline_s) from None
            raise
        if deadline.expired:  # the socket was shut down mid-body: what was read is a fragment
            raise DeadlineExceeded(deadline_s)
        return body
    finally:
        deadline.cancel()


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
