"""uap_core.download against a local HTTP server started here (no network): a real download with progress and
checksum, cache hits without network or re-hashing, a corrupt file refused with nothing left, an interrupted
download resumed by a Range request (or restarted when the server ignores Range), a stale part file, mirror
fallback, no server at all (one clear line), two threads fetching one file, and the pinned table itself."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import shared_path
from uap_core import download
from uap_core.download import (CIFAR10_BINARY, CIFAR10_RESNET20, CIFAR10_RESNET56, ChecksumError, DownloadError,
                               Remote, fetch, locate)
from uap_core.errors import UAPError

PAYLOAD = os.urandom(300_000)  # > 4 read chunks of 64 KiB
NAME = "weights-test.bin"


def _remote(payload: bytes = PAYLOAD, name: str = NAME, md5_only: bool = False) -> Remote:
    return Remote(name=name, urls=("https://example.invalid/" + name,),
                  sha256=None if md5_only else hashlib.sha256(payload).hexdigest(),
                  md5=hashlib.md5(payload).hexdigest() if md5_only else None,
                  size=len(payload), title="Test weights")


class _Server:
    """An HTTP server on 127.0.0.1 serving PAYLOAD as /<behaviours>/<NAME>, behaviours joined by '+':
    ok, norange (ignores Range), cutN (closes the connection after N body bytes, once per URL), corrupt (one
    byte flipped), missing (404), error500once (one 500, then ok), slow (pauses between chunks), stallN (stops
    sending for 1 s after N body bytes, once per URL)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.done_once: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                behaviours, _, name = self.path.strip("/").rpartition("/")
                flags = set(behaviours.split("+"))
                if name != NAME or "missing" in flags:
                    self.send_error(404)
                    return
                if "error500once" in flags and self.path not in server.done_once:
                    server.done_once.add(self.path)
                    self.send_error(500)
                    return
                data = bytearray(PAYLOAD)
                if "corrupt" in flags:
                    data[len(data) // 2] ^= 0xFF
                start = 0
                requested = self.headers.get("Range")
                if requested and "norange" not in flags:
                    start = int(requested.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = bytes(data[start:])
                cut = next((int(f[3:]) for f in flags if f.startswith("cut")), None)
                if cut is not None and self.path not in server.done_once:
                    server.done_once.add(self.path)
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                stall = next((int(f[5:]) for f in flags if f.startswith("stall")), None)
                if stall is not None and self.path not in server.done_once:
                    server.done_once.add(self.path)
                    self.wfile.write(body[:stall])
                    self.wfile.flush()
                    time.sleep(1.0)
                    return
                for offset in range(0, len(body), 32_768):
                    self.wfile.write(body[offset:offset + 32_768])
                    if "slow" in flags:
                        time.sleep(0.02)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def gets(self) -> list[tuple[str, str | None]]:
        return list(self.requests)


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    return tmp_path / "cache"


def _mirror(monkeypatch: pytest.MonkeyPatch, *bases: str) -> None:
    monkeypatch.setenv(download.MIRROR_ENV, " ".join(bases))


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache other than the lock files and the verification markers."""
    return sorted(p.name for p in cache.iterdir() if p.is_file() and not p.name.endswith(".lock")) \
        if cache.exists() else []


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_checks_and_reports_progress(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    calls: list[tuple[int, int]] = []
    path = fetch(_remote(), cache, progress=lambda done, total: calls.append((done, total)))
    assert path == cache / NAME and path.read_bytes() == PAYLOAD
    assert server.gets() == [(f"/ok/{NAME}", None)]
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) >= 4 and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert _leftovers(cache) == [NAME]  # no .part


def test_md5_pin_is_the_fallback(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    remote = _remote(md5_only=True)
    assert remote.algorithm == "md5"
    assert fetch(remote, cache, progress=None).read_bytes() == PAYLOAD
    _mirror(monkeypatch, server.base + "/corrupt")
    (cache / NAME).unlink()
    with pytest.raises(ChecksumError, match="MD5"):
        fetch(remote, cache, progress=None, backoff=0)


def test_cache_hit_needs_no_network_and_no_rehash(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    remote = _remote()
    path = fetch(remote, cache, progress=None)
    _mirror(monkeypatch, f"http://127.0.0.1:{_dead_port()}")

    def no_hashing(*args, **kwargs):
        raise AssertionError("a verified file was hashed again")

    with monkeypatch.context() as patch:
        patch.setattr(download, "file_digest", no_hashing)
        assert fetch(remote, cache, progress=None) == path
        assert locate(remote, cache_dir=cache) == path
    # the same size but other bytes and another mtime: checked again, refused, fetched afresh
    path.write_bytes(bytes(len(PAYLOAD)))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert locate(remote, cache_dir=cache) is None
    _mirror(monkeypatch, server.base + "/ok")
    assert fetch(remote, cache, progress=None).read_bytes() == PAYLOAD
    assert len(server.gets()) == 2


def test_search_dirs_come_first_and_a_wrong_copy_is_passed_over(server, cache, tmp_path, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    mine, wrong = tmp_path / "mine", tmp_path / "wrong"
    mine.mkdir(), wrong.mkdir()
    (mine / NAME).write_bytes(PAYLOAD)
    (wrong / NAME).write_bytes(PAYLOAD[:-1] + b"x")
    assert fetch(_remote(), cache, search_dirs=[wrong, mine], progress=None) == mine / NAME
    assert server.gets() == []
    assert fetch(_remote(), cache, search_dirs=[wrong], progress=None) == cache / NAME
    assert (wrong / NAME).exists() and len(server.gets()) == 1  # a user's file is never deleted


def test_corrupt_download_is_refused_and_nothing_is_left(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/corrupt")
    with pytest.raises(ChecksumError) as caught:
        fetch(_remote(), cache, progress=None, backoff=0)
    message = str(caught.value)
    assert "\n" not in message and NAME in message and "not the pinned one" in message and "SHA256" in message
    assert _leftovers(cache) == []
    assert locate(_remote(), cache_dir=cache) is None


def test_interrupted_download_resumes_with_a_range_request(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/cut100000")
    calls: list[tuple[int, int]] = []
    path = fetch(_remote(), cache, progress=lambda d, t: calls.append((d, t)), backoff=0)
    assert path.read_bytes() == PAYLOAD
    assert server.gets() == [(f"/cut100000/{NAME}", None), (f"/cut100000/{NAME}", "bytes=100000-")]
    assert (100_000, len(PAYLOAD)) in calls and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert _leftovers(cache) == [NAME]


def test_a_stalled_download_times_out_and_resumes(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/stall70000")
    assert fetch(_remote(), cache, progress=None, backoff=0, timeout=0.3).read_bytes() == PAYLOAD
    (_, first), (_, resumed) = server.gets()
    assert first is None and resumed.startswith("bytes=")  # a read lost in the stall is asked for again
    assert 0 < int(resumed[6:-1]) <= 70_000


def test_interrupted_download_restarts_when_the_server_ignores_range(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/cut100000+norange")
    assert fetch(_remote(), cache, progress=None, backoff=0).read_bytes() == PAYLOAD
    assert [r for _, r in server.gets()] == [None, "bytes=100000-"]  # asked, got the whole file, started over


def test_a_part_file_left_by_an_earlier_run_is_resumed(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(PAYLOAD[:123_456])
    assert fetch(_remote(), cache, progress=None).read_bytes() == PAYLOAD
    assert server.gets() == [(f"/ok/{NAME}", "bytes=123456-")]


def test_a_stale_part_file_that_spoils_the_checksum_is_dropped_and_fetched_afresh(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/ok")
    cache.mkdir()
    (cache / f"{NAME}.part").write_bytes(b"\0" * 1000)
    assert fetch(_remote(), cache, progress=None, backoff=0).read_bytes() == PAYLOAD
    assert [r for _, r in server.gets()] == ["bytes=1000-", None]


def test_server_errors_are_retried_and_missing_mirrors_skipped(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/missing", server.base + "/error500once")
    assert fetch(_remote(), cache, progress=None, backoff=0).read_bytes() == PAYLOAD
    assert [p.split("/")[1] for p, _ in server.gets()] == ["missing", "error500once", "error500once"]


def test_no_server_gives_one_clear_line_fast(cache, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_dead_port()}"
    _mirror(monkeypatch, url)
    weights = tmp_path / "weights"
    started = time.perf_counter()
    with pytest.raises(DownloadError) as caught:  # default retries and backoff: an unreachable host fails fast
        fetch(_remote(), cache, search_dirs=[weights], manual_hint="set UAP_WEIGHTS_DIR or pass --weights FILE")
    assert time.perf_counter() - started < 5
    assert isinstance(caught.value, UAPError) and not isinstance(caught.value, ChecksumError)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    for part in (NAME, "Test weights", str(weights), str(cache), f"{url}/{NAME}", "connection refused",
                 "UAP_WEIGHTS_DIR", "--weights"):
        assert part in message, (part, message)
    assert _leftovers(cache) == []


def test_two_threads_fetching_one_file_download_it_once(server, cache, monkeypatch):
    _mirror(monkeypatch, server.base + "/slow")
    results: list[Path | BaseException] = []

    def worker() -> None:
        try:
            results.append(fetch(_remote(), cache, progress=None))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == [cache / NAME, cache / NAME]
    assert (cache / NAME).read_bytes() == PAYLOAD and len(server.gets()) == 1
    assert _leftovers(cache) == [NAME]


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == tmp_path / "xdg" / "uap_explorer"
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "mine"))
    assert download.default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(download.MIRROR_ENV, "ftp://somewhere")
    with pytest.raises(DownloadError, match="UAP_DOWNLOAD_MIRROR"):
        download.remote_urls(CIFAR10_RESNET20)


def test_remote_refuses_malformed_pins():
    good = dict(name="a.th", urls=("https://h/a.th",), sha256="0" * 64, size=1, title="t")
    Remote(**good)
    for change in (dict(name="x/a.th"), dict(urls="https://h/a.th"), dict(urls=("ftp://h/a",)),
                   dict(sha256="0" * 63), dict(sha256=None), dict(size=0), dict(md5="z" * 32)):
        with pytest.raises(ValueError):
            Remote(**{**good, **change})


def test_pinned_table_matches_the_original_weights(tmp_path):
    folder = shared_path("models/cifar10-resnet")
    for remote in (CIFAR10_RESNET20, CIFAR10_RESNET56):
        original = folder / remote.name
        assert original.stat().st_size == remote.size
        assert download.file_digest(original) == remote.sha256
        assert remote.sha256.startswith(remote.name.split("-")[1].split(".")[0])  # torch.hub's naming rule
        assert locate(remote, search_dirs=[folder], cache_dir=tmp_path) == original
    assert CIFAR10_BINARY.size == 170_052_171 and CIFAR10_BINARY.md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert CIFAR10_BINARY.sha256 is None and CIFAR10_BINARY.algorithm == "md5"  # the publisher states only the MD5
    assert all(url.startswith("https://") for r in download.KNOWN_REMOTES.values() for url in r.urls)
