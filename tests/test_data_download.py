"""download_sources against a real HTTP server on 127.0.0.1 (never the internet): parallel, retried
with backoff, sha256-checked, resumable, and one line per failed file naming its URL."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from local_http import serving

from mmtoxicqa import cli
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.data.sources import download_sources

FILES = {f"toxigen/prompts/file_{i}.txt": f"fixture line {i}\n".encode() * 50 for i in range(6)}
FLAKY = "figstep/flaky.txt"  # answers 503 twice, then the file
TRUNCATED = "davidson/truncated.csv"  # promises more bytes than it sends, then hangs up
MISSING = "davidson/missing.csv"  # 404


class Upstream(BaseHTTPRequestHandler):
    """Serves FILES (and the special paths above) from memory, counting every request per path and
    the most requests it had in flight at once."""

    lock = threading.Lock()
    hits: dict[str, int] = {}
    in_flight = 0
    most_in_flight = 0
    delay_s = 0.0

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.lstrip("/")
        cls = type(self)
        with cls.lock:
            cls.hits[path] = cls.hits.get(path, 0) + 1
            count = cls.hits[path]
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            time.sleep(cls.delay_s)
            if path == FLAKY and count <= 2:
                return self._send(503, b"busy")
            if path == FLAKY:
                return self._send(200, b"served on the third try\n")
            if path == TRUNCATED:
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"only the first bytes")
                self.wfile.flush()
                self.close_connection = True
                return None
            if path in FILES:
                return self._send(200, FILES[path])
            return self._send(404, b"not found")
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def upstream():
    Upstream.hits, Upstream.in_flight, Upstream.most_in_flight, Upstream.delay_s = {}, 0, 0, 0.0
    with serving(Upstream, watchdog_s=120) as base:
        yield base


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(base: str, paths: dict[str, bytes | None]) -> dict:
    """Manifest entries for ``paths`` served by ``base``; a ``None`` value pins no sha256."""
    return {"files": [{"path": p, "url": f"{base}/{p}", **({"sha256": sha(d)} if d is not None else {})} for p, d in paths.items()]}


def test_parallel_download_verifies_and_a_second_run_fetches_nothing(upstream, tmp_path):
    Upstream.delay_s = 0.3  # every answer takes a while: a sequential download would have one in flight at a time
    manifest = manifest_for(upstream, FILES)
    download_sources(tmp_path / "dl", manifest, progress=False, workers=4)
    for path, data in FILES.items():
        assert (tmp_path / "dl" / path).read_bytes() == data
    assert Upstream.most_in_flight >= 2
    assert sum(Upstream.hits.values()) == len(FILES)
    assert not [p for p in (tmp_path / "dl").rglob("*") if p.is_file() and p.name.endswith(".tmp")]

    Upstream.hits.clear()
    download_sources(tmp_path / "dl", manifest, progress=False, workers=4)
    assert Upstream.hits == {}  # every file finished and verified: nothing fetched again

    stale = tmp_path / "dl" / next(iter(FILES))
    stale.write_bytes(b"a file from an interrupted or older download")
    download_sources(tmp_path / "dl", manifest, progress=False, workers=4)
    assert Upstream.hits == {next(iter(FILES)): 1} and stale.read_bytes() == FILES[next(iter(FILES))]


def test_a_flaky_endpoint_is_retried_with_backoff(upstream, tmp_path):
    body = b"served on the third try\n"
    started = time.monotonic()
    download_sources(tmp_path / "dl", manifest_for(upstream, {FLAKY: body}), progress=False, retries=3, backoff=0.05)
    assert (tmp_path / "dl" / FLAKY).read_bytes() == body
    assert Upstream.hits[FLAKY] == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s: exponential


def test_a_wrong_checksum_is_refused_naming_the_url(upstream, tmp_path):
    path = next(iter(FILES))
    manifest = {"files": [{"path": path, "url": f"{upstream}/{path}", "sha256": "0" * 64}]}
    lines: list[str] = []
    with pytest.raises(MMToxError) as info:
        download_sources(tmp_path / "dl", manifest, progress=False, backoff=0.01, warn=lines.append)
    assert lines == [
        f"sha256 mismatch for downloaded source file {path} ({upstream}/{path}): expected {'0' * 64}, got {sha(FILES[path])}; refused (not kept)"
    ]
    assert Upstream.hits[path] == 1  # a complete but wrong file is not fetched again and again
    assert str(info.value).startswith(f"1 of 1 source file(s) could not be downloaded into {tmp_path / 'dl'}")
    assert not (tmp_path / "dl" / path).exists()
    assert not [p for p in (tmp_path / "dl").rglob("*") if p.is_file()]  # no temporary left either


def test_a_truncated_download_never_looks_finished(upstream, tmp_path):
    """No sha256 pinned: only the rename after a complete read marks a file finished, so the next run
    fetches it again instead of keeping a cut-off file."""
    lines: list[str] = []
    manifest = manifest_for(upstream, {TRUNCATED: None})
    with pytest.raises(MMToxError):
        download_sources(tmp_path / "dl", manifest, progress=False, retries=1, backoff=0.01, warn=lines.append)
    assert len(lines) == 1 and f"from {upstream}/{TRUNCATED}: network unreachable (" in lines[0] and lines[0].endswith("after 2 tries")
    assert not [p for p in (tmp_path / "dl").rglob("*") if p.is_file()]
    assert Upstream.hits[TRUNCATED] == 2


def test_failed_files_one_line_each_then_exit_2(upstream, tmp_path, capsys, monkeypatch):
    """Through the command line: every failed file is one line naming its URL, the good ones are
    kept, and the summary exits 2; a 404 is not retried."""
    from mmtoxicqa.data import sources

    manifest = manifest_for(upstream, {**FILES, MISSING: b"never served", FLAKY: b"never mind"})
    monkeypatch.setattr(sources, "BACKOFF_S", 0.01)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code = cli.main(["download-sources", "--out", str(tmp_path / "dl"), "--manifest", str(tmp_path / "manifest.json"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert sorted(err[:-1]) == sorted(
        [
            f"cannot download source file {MISSING} from {upstream}/{MISSING}: HTTP 404",
            f"sha256 mismatch for downloaded source file {FLAKY} ({upstream}/{FLAKY}): expected {sha(b'never mind')}, "
            f"got {sha(b'served on the third try' + bytes([10]))}; refused (not kept)",
        ]
    )
    assert err[-1].startswith(f"mmtoxicqa: error: 2 of {len(FILES) + 2} source file(s) could not be downloaded")
    assert "rerun the same command to resume (6 finished file(s) are kept)" in err[-1]
    assert Upstream.hits[MISSING] == 1
    assert all((tmp_path / "dl" / p).read_bytes() == d for p, d in FILES.items())
