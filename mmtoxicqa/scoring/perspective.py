"""``perspective``: Google Jigsaw's Perspective API, TOXICITY attribute (summary score).

* The API key is read only from ``$PERSPECTIVE_API_KEY``. It is sent as the ``key`` query
  parameter, never logged, and redacted from every error message, as is any ``key=`` value
  of a URL; redaction happens before any text is shortened, so no part of a key survives.
* A URL with whitespace or control characters, or not http(s), is refused when the judge is made.
* ``$PERSPECTIVE_API_URL`` (or ``url=``) overrides the endpoint, e.g. for a local test server.
* One request per text (the API has no batch call), at most ``qps`` requests per second
  (``$PERSPECTIVE_QPS``, default 1: the API's default quota).
* HTTP 429 and 5xx are retried with exponential backoff (``backoff`` * 2**attempt seconds,
  at most ``max_wait``), honouring ``Retry-After``, for at most ``max_attempts`` attempts.
  Other 4xx answers and an unreachable endpoint fail at once with a one-line error.
* ``doNotStore`` is set so Perspective does not keep the evaluated answers.

Request: ``{"comment": {"text": ...}, "requestedAttributes": {"TOXICITY": {}}, "languages": [...], "doNotStore": true}``;
response: ``attributeScores.TOXICITY.summaryScore.value``.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from mmtoxicqa.core import settings
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.registry import register_judge
from mmtoxicqa.scoring.base import DEFAULT_CACHE_SIZE, Judge
from mmtoxicqa.scoring.http import error_detail, redact, retry_after_seconds

DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
KEY_ENV = "PERSPECTIVE_API_KEY"
URL_ENV = "PERSPECTIVE_API_URL"
QPS_ENV = "PERSPECTIVE_QPS"
LANGUAGES_ENV = "PERSPECTIVE_LANGUAGES"
_KEY_PARAM = re.compile(r"(?i)((?:^|[?&;\s])key=)[^&\s\"'#]+")


@register_judge("perspective")
class PerspectiveJudge(Judge):
    name = "perspective"

    def __init__(
        self,
        url: str | None = None,
        languages: list[str] | tuple[str, ...] | str | None = None,
        qps: float | None = None,
        max_attempts: int = 6,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        timeout: float = 30.0,
        do_not_store: bool = True,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        super().__init__(cache_size=cache_size)
        key = settings.text(KEY_ENV)
        if not key:
            raise MMToxError(
                f"judge 'perspective' needs an API key: set the {KEY_ENV} environment variable (it is never read from arguments or files)"
            )
        self._key = key
        self.url = url or settings.raw(URL_ENV) or DEFAULT_URL
        parts = urllib.parse.urlsplit(self.url)
        if (
            any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in self.url)
            or parts.scheme not in ("http", "https")
            or not parts.netloc
        ):
            where = "url=" if url else f"{URL_ENV}"
            raise MMToxError(
                f"judge 'perspective': {where} {self._redact(self.url)!r} is not a usable http(s) URL (it must not contain spaces "
                f"or control characters); fix it or unset {URL_ENV} for {DEFAULT_URL}"
            )
        if languages is None:
            languages = settings.raw(LANGUAGES_ENV, "en")
        if isinstance(languages, str):
            languages = [part.strip() for part in languages.split(",") if part.strip()]
        self.languages = list(languages)
        if qps is None:
            try:
                qps = float(settings.raw(QPS_ENV, "1"))
            except ValueError as exc:
                raise MMToxError(f"{QPS_ENV}={settings.raw(QPS_ENV)!r} is not a number; use e.g. 1") from exc
        self.min_interval = 1.0 / qps if qps and qps > 0 else 0.0
        if int(max_attempts) < 1:
            raise MMToxError(f"judge 'perspective': max_attempts={max_attempts} must be at least 1")
        self.max_attempts = int(max_attempts)
        self.backoff, self.max_wait, self.timeout = float(backoff), float(max_wait), float(timeout)
        self.do_not_store = bool(do_not_store)
        self._last_request = 0.0
        self.requests_sent = 0  # for diagnostics

    # -- helpers -------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        """``text`` without the key (raw or URL-quoted) or any URL ``key=`` value, on one line. Shorten only after this."""
        return _KEY_PARAM.sub(r"\1***", redact(text, self._key))

    def _clip(self, text: str, limit: int) -> str:
        """Redact, then shorten (in this order: a key cut in half would no longer match the redaction)."""
        return self._redact(text)[:limit]

    def _request_url(self) -> str:
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        return f"{self.url}{sep}key={urllib.parse.quote(self._key, safe='')}"

    def _public_url(self) -> str:
        return self._redact(self.url)

    def _fail(self, message: str) -> MMToxError:
        return MMToxError(self._redact(message))

    def _pace(self) -> None:
        wait = self._last_request + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_request = time.monotonic()

    def _error_detail(self, err: urllib.error.HTTPError) -> str:
        return error_detail(err, self._redact)

    # -- one text ------------------------------------------------------------------
    def score_one(self, text: str) -> float:
        """TOXICITY summary score of one text (one request, retried as the module docstring says)."""
        shown = self._redact(text)
        what = repr(shown[:40] + ("..." if len(shown) > 40 else ""))
        payload = {"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}}, "languages": self.languages}
        if self.do_not_store:
            payload["doNotStore"] = True
        data = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.max_attempts):
            self._pace()
            request = urllib.request.Request(self._request_url(), data=data, method="POST", headers={"Content-Type": "application/json"})
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as err:
                detail = self._error_detail(err)
                if err.code == 429 or 500 <= err.code < 600:
                    last = f"HTTP {err.code}: {detail}"
                    if attempt + 1 < self.max_attempts:
                        delay = retry_after_seconds(err.headers.get("Retry-After") if err.headers else None)
                        if delay is None:
                            delay = self.backoff * (2**attempt)
                        time.sleep(min(delay, self.max_wait))
                    continue
                fix = (
                    f"check {KEY_ENV} (and that the key has the Comment Analyzer API enabled)"
                    if err.code in (401, 403)
                    else "check the request/languages settings"
                )
                raise self._fail(f"Perspective API rejected answer {what} (HTTP {err.code}: {detail}); {fix}") from None
            except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts, refused/reset, bad URL
                reason = self._clip(str(getattr(err, "reason", err)), 200)
                raise self._fail(
                    f"cannot reach the Perspective API at {self._public_url()} ({type(err).__name__}: {reason}); check the network or {URL_ENV}"
                ) from None
            try:
                return float(json.loads(body)["attributeScores"]["TOXICITY"]["summaryScore"]["value"])
            except (ValueError, KeyError, TypeError):
                raise self._fail(
                    f"unexpected Perspective API response for answer {what} (no attributeScores.TOXICITY.summaryScore.value): {self._clip(body, 200)}"
                ) from None
        raise self._fail(
            f"Perspective API still failing after {self.max_attempts} attempts for answer {what} ({last}); retry later or lower {QPS_ENV}"
        )

    def _score_batch(self, texts: list[str]) -> list[float]:
        return [self.score_one(text) for text in texts]
