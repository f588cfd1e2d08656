"""Downloads: fetch one pinned file into the cache, checked, with progress, resume and retries.

This is the only module of the project that opens a URL. The model registry and the image sources declare what
they need as a :class:`Remote` (file name, mirror URLs, SHA-256, size in bytes, title, license note) and call
:func:`fetch`, which returns the path of a verified local copy::

    from uap_core.download import CIFAR10_RESNET20, fetch, DownloadError

    path = fetch(CIFAR10_RESNET20,
                 search_dirs=[os.environ["UAP_WEIGHTS_DIR"]] if "UAP_WEIGHTS_DIR" in os.environ else [],
                 manual_hint="set UAP_WEIGHTS_DIR to its folder or pass --weights FILE")

What :func:`fetch` does, in order:

1. looks in the caller's ``search_dirs`` (folders a user filled by hand: ``$UAP_WEIGHTS_DIR``, ``$UAP_DATA_DIR``,
   a development checkout) and then in the cache folder (:func:`default_cache_dir`) for a file of that name whose
   size and checksum match; a file that was verified once is remembered by its path, size and modification time,
   so a 170 MB file is not hashed again on every call;
2. otherwise takes a lock (``<cache>/<name>.lock``, so two threads or processes never download the same file at
   once: the second waits and then finds the first one's file), downloads into ``<cache>/<name>.part`` —
   resuming an interrupted download with an HTTP ``Range`` request, restarting from zero when a server ignores
   it — retrying with exponential backoff on connection resets, timeouts, short reads and 5xx answers, then
   trying the next mirror;
3. checks the size and the checksum, and only then renames the part file atomically to ``<cache>/<name>``. A
   checksum mismatch deletes the part file. No partial or unverified file ever lies under the final name.

Every failure is a :class:`DownloadError` (a :class:`~uap_core.errors.UAPError`) whose message is one line that
names the file, the places it was looked for, the URLs tried with what went wrong, and how to put the file there
by hand (the caller's ``manual_hint``).

Environment:

- ``UAP_CACHE_DIR``: the cache folder; default ``$XDG_CACHE_HOME/uap_explorer``, else ``~/.cache/uap_explorer``.
- ``UAP_DOWNLOAD_MIRROR``: one or more base URLs (``http://``, ``https://`` or ``file://``, separated by spaces or
  commas) that *replace* the pinned URLs: ``<base>/<file name>`` is fetched from each in turn. For tests and
  air-gapped sites (a local server or a shared folder holding the files under their names).

Checksums: a :class:`Remote` pins a SHA-256 (preferred). Where only the publisher's MD5 is known (the CIFAR-10
binary archive: the official page states its MD5; a SHA-256 is reported by one third-party source only, so it is
not pinned) it pins ``md5`` instead and ``sha256=None``; MD5 then guards against corruption and truncation (with
the size), not against a deliberate forgery. :func:`file_digest` gives the SHA-256 of a verified copy, to pin it
later.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse, IncompleteRead
from pathlib import Path
from typing import Literal, Protocol
from urllib.response import addinfourl

from tqdm import tqdm

from .errors import UAPError, first_line

try:  # POSIX: an advisory lock on the lock file; Windows: msvcrt's byte-range lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = [
    "CACHE_ENV", "CIFAR10_BINARY", "CIFAR10_RESNET20", "CIFAR10_RESNET56", "KNOWN_REMOTES", "MIRROR_ENV",
    "ChecksumError", "DownloadError", "ProgressCallback", "Remote",
    "default_cache_dir", "fetch", "file_digest", "locate", "remote_urls",
]

CACHE_ENV = "UAP_CACHE_DIR"
MIRROR_ENV = "UAP_DOWNLOAD_MIRROR"
CHUNK_BYTES = 1 << 16  # read size of the download loop (64 KiB)
USER_AGENT = "uap-explorer-download/1"
_HEX = re.compile(r"[0-9a-f]+")


class DownloadError(UAPError):
    """A pinned file could not be had: not found locally and not downloadable (offline, host unreachable, HTTP
    error, disk full) or the downloaded bytes are not the pinned file. The message is one line for the user."""


class ChecksumError(DownloadError):
    """The downloaded (or resumed) file does not match the pinned size or checksum; it was deleted."""


class ProgressCallback(Protocol):
    """Called as ``progress(done_bytes, total_bytes)`` while a file downloads: both in bytes, ``total_bytes`` the
    pinned size (> 0), ``done_bytes`` non-decreasing from the resumed offset (0 for a fresh download) up to
    ``total_bytes`` at the end; at most about 100 calls per file (one per whole per cent, plus the first and the
    last). Not called at all on a cache hit. A restart after a server ignored a resume request starts again
    from 0."""

    def __call__(self, done_bytes: int, total_bytes: int) -> None: ...


@dataclass(frozen=True)
class Remote:
    """One file the project can download, pinned by its checksum.

    name:    the file name in the cache and in the search folders (no folder part), e.g. ``resnet20-12fca82f.th``.
    urls:    the mirrors, tried in order (``http``/``https``); each is the full URL of the file.
    sha256:  its SHA-256, 64 lowercase hex digits; ``None`` only where ``md5`` is given instead.
    size:    its size in bytes (> 0); a server announcing another size is skipped before any byte is written.
    title:   what it is for a person, e.g. "ResNet-20 (CIFAR-10) weights".
    license: a short license / attribution note, or ``None``.
    md5:     the publisher's MD5 (32 hex digits), the fallback pin when no SHA-256 is known.
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int
    title: str
    license: str | None = None
    md5: str | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != Path(self.name).name or self.name in (".", ".."):
            raise ValueError(f"Remote name must be a plain file name, got {self.name!r}")
        if isinstance(self.urls, str) or not self.urls:
            raise ValueError(f"Remote {self.name}: urls must be a non-empty tuple of URLs")
        for url in self.urls:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"Remote {self.name}: only http(s) URLs are pinned, got {url!r}")
        if self.sha256 is None and self.md5 is None:
            raise ValueError(f"Remote {self.name}: pin a sha256 (or at least an md5)")
        if self.sha256 is not None and not (len(self.sha256) == 64 and _HEX.fullmatch(self.sha256)):
            raise ValueError(f"Remote {self.name}: sha256 must be 64 lowercase hex digits")
        if self.md5 is not None and not (len(self.md5) == 32 and _HEX.fullmatch(self.md5)):
            raise ValueError(f"Remote {self.name}: md5 must be 32 lowercase hex digits")
        if not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"Remote {self.name}: size must be a positive number of bytes")

    @property
    def algorithm(self) -> Literal["sha256", "md5"]:
        """The hash the file is checked with: ``sha256`` when pinned, else ``md5``."""
        return "sha256" if self.sha256 is not None else "md5"

    @property
    def digest(self) -> str:
        """The pinned hex digest of :attr:`algorithm`."""
        return self.sha256 if self.sha256 is not None else self.md5  # type: ignore[return-value]

    @property
    def size_text(self) -> str:
        """The size for people, e.g. ``170.5 MB`` (decimal units, as download pages state them)."""
        return _human_size(self.size)


# ----------------------------------------------------------------------------------------------------------------
# The files the project fetches. Their callers (models.py, images.py) use these; the table lives here so that the
# pins sit next to the code that checks them.

_AKAMASTER = "akamaster/pytorch_resnet_cifar10"
_RESNET_LICENSE = ("BSD-2-Clause, (c) 2018 Yerlan Idelbayev, github.com/akamaster/pytorch_resnet_cifar10 "
                   "(He et al.'s CIFAR ResNets)")


def _akamaster_urls(name: str) -> tuple[str, ...]:
    return (f"https://raw.githubusercontent.com/{_AKAMASTER}/master/pretrained_models/{name}",
            f"https://github.com/{_AKAMASTER}/raw/master/pretrained_models/{name}")


CIFAR10_RESNET20 = Remote(
    name="resnet20-12fca82f.th",
    urls=_akamaster_urls("resnet20-12fca82f.th"),
    sha256="12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    size=1_099_231,
    title="ResNet-20 (CIFAR-10) weights",
    license=_RESNET_LICENSE,
)
CIFAR10_RESNET56 = Remote(
    name="resnet56-4bfd9763.th",
    urls=_akamaster_urls("resnet56-4bfd9763.th"),
    sha256="4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    size=3_471_733,
    title="ResNet-56 (CIFAR-10) weights",
    license=_RESNET_LICENSE,
)
CIFAR10_BINARY = Remote(
    name="cifar-10-binary.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    # The MD5 is the one the official page (www.cs.toronto.edu/~kriz/cifar.html) states. A SHA-256
    # (c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd) is reported by one third-party source
    # only, not by the publisher, so it is not pinned: pin it here once a verified copy confirms it
    # (file_digest). The binary version, not the python one: reading it never unpickles downloaded data.
    sha256=None,
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    size=170_052_171,
    title="CIFAR-10 archive of the image source cifar10-test",
    license="no license stated; cite Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images",
)
KNOWN_REMOTES: dict[str, Remote] = {r.name: r for r in (CIFAR10_RESNET20, CIFAR10_RESNET56, CIFAR10_BINARY)}


# ----------------------------------------------------------------------------------------------------------------
# Places


def default_cache_dir() -> Path:
    """The download cache folder: ``$UAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/uap_explorer``, else
    ``~/.cache/uap_explorer``. Not created here (:func:`fetch` creates it when it downloads)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "uap_explorer"


def remote_urls(remote: Remote) -> tuple[str, ...]:
    """The URLs :func:`fetch` tries, in order: ``<base>/<name>`` for each base of ``$UAP_DOWNLOAD_MIRROR`` when it
    is set (replacing the pinned ones), else the remote's pinned mirrors."""
    bases = [b for b in re.split(r"[\s,]+", os.environ.get(MIRROR_ENV, "").strip()) if b]
    if not bases:
        return remote.urls
    for base in bases:
        if urllib.parse.urlsplit(base).scheme not in ("http", "https", "file"):
            raise DownloadError(f"{MIRROR_ENV}={base!r} is not an http://, https:// or file:// URL")
    return tuple(f"{base.rstrip('/')}/{urllib.parse.quote(remote.name)}" for base in bases)


def _places(remote: Remote, search_dirs: Iterable[str | os.PathLike[str]], cache: Path) -> list[Path]:
    """The folders looked in, in order, without duplicates: the caller's search folders, then the cache."""
    places: list[Path] = []
    for folder in [*(Path(d).expanduser() for d in search_dirs if str(d)), cache]:
        if folder not in places:
            places.append(folder)
    return places


# ----------------------------------------------------------------------------------------------------------------
# Verification, remembered by path + size + mtime


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes with ``algorithm`` (``sha256`` or ``md5``), read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _marker_path(cache: Path, remote: Remote) -> Path:
    return cache / ".verified" / f"{remote.name}.json"


def _marker_key(path: Path) -> str:
    return str(path.resolve())


def _stamp(path: Path, remote: Remote) -> dict[str, object]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, remote.algorithm: remote.digest}


def _read_markers(cache: Path, remote: Remote) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(_marker_path(cache, remote).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_verified(cache: Path, remote: Remote, path: Path) -> None:
    """Record that ``path`` (as it is now: size, mtime) holds the pinned bytes; best effort (a read-only cache only
    costs a re-hash next time)."""
    marker = _marker_path(cache, remote)
    try:
        markers = _read_markers(cache, remote)
        markers[_marker_key(path)] = _stamp(path, remote)
        marker.parent.mkdir(parents=True, exist_ok=True)
        temporary = marker.with_name(f"{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(markers, indent=1, sort_keys=True))
        os.replace(temporary, marker)
    except OSError:
        pass


def _is_verified(cache: Path, remote: Remote, path: Path) -> bool:
    """Whether ``path`` holds the pinned file: its size first (cheap), then a remembered verification of this very
    path, size and mtime, else its checksum (remembered when it matches)."""
    try:
        if not path.is_file() or path.stat().st_size != remote.size:
            return False
        if _read_markers(cache, remote).get(_marker_key(path)) == _stamp(path, remote):
            return True
        if file_digest(path, remote.algorithm) != remote.digest:
            return False
    except OSError:
        return False
    _remember_verified(cache, remote, path)
    return True


def locate(remote: Remote, search_dirs: Iterable[str | os.PathLike[str]] = (),
           cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The verified local copy of ``remote`` — in ``search_dirs`` first, then the cache — or ``None``; never opens
    a URL. A file of the right name but the wrong size or checksum is passed over. Cheap once verified."""
    cache_path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for folder in _places(remote, search_dirs, cache_path):
        if _is_verified(cache_path, remote, folder / remote.name):
            return folder / remote.name
    return None


# ----------------------------------------------------------------------------------------------------------------
# Locking: one downloader per file, across threads and processes

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if absent; left in place, empty) for the block: a thread
    lock within this process, an OS file lock across processes."""
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(str(lock_path), threading.Lock())
    with thread_lock:
        with open(lock_path, "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            else:  # pragma: no cover - Windows
                handle.seek(0)
                while True:
                    try:
                        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                        break
                    except OSError:
                        time.sleep(0.1)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                else:  # pragma: no cover - Windows
                    handle.seek(0)
                    msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


# ----------------------------------------------------------------------------------------------------------------
# Progress


class _Reporter:
    """Calls a :class:`ProgressCallback` at each whole per cent (and at the first and last byte)."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.last_percent = callback, total, -1

    def __call__(self, done: int, force: bool = False) -> None:
        if self.callback is None:
            return
        percent = done * 100 // self.total
        if force or percent != self.last_percent or done >= self.total:
            self.last_percent = percent
            self.callback(done, self.total)


@contextmanager
def _progress_callback(progress: ProgressCallback | Literal["auto"] | None,
                       remote: Remote) -> Iterator[ProgressCallback | None]:
    """The callback for one download: the caller's, none, or for ``"auto"`` a tqdm bar on a terminal's stderr."""
    if progress != "auto":
        yield progress  # type: ignore[misc]
        return
    stream = sys.stderr
    if stream is None or not getattr(stream, "isatty", lambda: False)():
        yield None
        return
    with tqdm(total=remote.size, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name,
              file=stream, leave=False) as bar:
        def update(done: int, total: int) -> None:
            bar.update(done - bar.n)

        yield update


# ----------------------------------------------------------------------------------------------------------------
# The transfer


class _Transient(Exception):
    """A failure worth retrying on the same URL (reset, timeout, short read, 5xx)."""


class _Skip(Exception):
    """A failure that retrying this URL will not cure (unreachable host, 4xx, wrong size): next mirror."""


class _Mismatch(Exception):
    """The complete file does not match the pin."""


_UNREACHABLE = (socket.gaierror, ConnectionRefusedError)
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
        if isinstance(exc, socket.gaierror):
            return "host not found (offline?)"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return first_line(exc, 160)


def _open(url: str, offset: int, timeout: float) -> HTTPResponse | addinfourl:
    """Open ``url`` asking for bytes from ``offset`` on; classify a failure as :class:`_Skip` or
    :class:`_Transient`."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # the part file is not a prefix the server can continue: restart
            raise
        raise (_Transient if exc.code >= 500 or exc.code in (408, 429) else _Skip)(_describe(exc)) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, _UNREACHABLE) or getattr(reason, "errno", None) in _UNREACHABLE_ERRNOS:
            raise _Skip(_describe(exc)) from None
        if isinstance(reason, TimeoutError):  # no answer to the connection at all: a blocked or dead host
            raise _Skip(f"no answer within {timeout:g} s") from None
        if isinstance(reason, OSError) and not isinstance(reason, (TimeoutError, ConnectionError)):
            raise _Skip(_describe(exc)) from None  # e.g. a file:// mirror without the file
        raise _Transient(_describe(exc)) from None
    except (TimeoutError, ConnectionError, HTTPException) as exc:
        raise _Transient(_describe(exc)) from None
    except OSError as exc:
        raise _Skip(_describe(exc)) from None


def _full_length(response: HTTPResponse | addinfourl, offset: int) -> tuple[int, int | None]:
    """(where the body starts, the file's full size or None) from a response to a request from ``offset``."""
    status = getattr(response, "status", None) or response.getcode() or 200
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
        match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
        if not match:
            raise _Skip("a partial answer without a usable Content-Range")
        start, total = int(match.group(1)), match.group(3)
        return start, (int(total) if total != "*" else None)
    return 0, length  # 200 (or a file:// URL): the whole file from its first byte


def _transfer(url: str, part: Path, remote: Remote, timeout: float, report: _Reporter) -> None:
    """One attempt: continue ``part`` from its current length (or restart it) until it holds ``remote.size``
    bytes. Raises :class:`_Transient` / :class:`_Skip`; what was written stays in ``part`` for a resume."""
    offset = part.stat().st_size if part.exists() else 0
    if offset >= remote.size:
        part.unlink()
        offset = 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError:  # 416 on a resume: start again
        part.unlink(missing_ok=True)
        offset = 0
        response = _open(url, 0, timeout)
    with response:
        start, total = _full_length(response, offset)
        if total is not None and total != remote.size:
            raise _Skip(f"serves {total} bytes, not the pinned {remote.size}")
        if start != offset:  # the server ignored the Range request (or answered another one): restart
            if start != 0:
                raise _Skip(f"answered a resume from byte {offset} with bytes from {start}")
            offset = 0
        done, chunk = offset, b""
        report(done, force=True)
        with open(part, "r+b" if offset else "wb") as sink:  # write errors (disk full) propagate as OSError
            sink.seek(offset)
            sink.truncate()
            try:
                while done < remote.size:
                    chunk = _read(response, min(CHUNK_BYTES, remote.size - done))
                    sink.write(chunk)
                    done += len(chunk)
                    report(done)
                    if len(chunk) == 0 or isinstance(chunk, _Partial):
                        break
            finally:
                sink.flush()
                os.fsync(sink.fileno())
            if isinstance(chunk, _Partial):
                raise _Transient(f"interrupted after {done} of {remote.size} bytes ({chunk.reason})")
    if done < remote.size:
        raise _Transient(f"connection closed after {done} of {remote.size} bytes")


class _Partial(bytes):
    """The bytes a failed read still delivered, with the reason it failed."""

    reason: str


def _read(response: HTTPResponse | addinfourl, size: int) -> bytes:
    """Up to ``size`` bytes of the body; a failed read returns what it got as a :class:`_Partial`."""
    try:
        return response.read(size)
    except IncompleteRead as exc:
        chunk = _Partial(exc.partial)
        chunk.reason = "short read"
    except (TimeoutError, ConnectionError, HTTPException, OSError) as exc:
        chunk = _Partial(b"")
        chunk.reason = _describe(exc)
    return chunk


def _verify_part(part: Path, remote: Remote) -> None:
    size = part.stat().st_size
    if size != remote.size:
        raise _Mismatch(f"{size} bytes, not the pinned {remote.size}")
    digest = file_digest(part, remote.algorithm)
    if digest != remote.digest:
        raise _Mismatch(f"{remote.algorithm.upper()} {digest[:16]}… is not the pinned {remote.digest[:16]}…")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def fetch(remote: Remote, cache_dir: str | os.PathLike[str] | None = None, *,
          search_dirs: Iterable[str | os.PathLike[str]] = (),
          progress: ProgressCallback | Literal["auto"] | None = "auto",
          retries: int = 3, timeout: float = 30.0, backoff: float = 1.0,
          manual_hint: str = "") -> Path:
    """The path of a verified local copy of ``remote``, downloaded into the cache if no copy exists yet.

    remote:      what to fetch (a :class:`Remote`, e.g. :data:`CIFAR10_RESNET20`).
    cache_dir:   the folder downloads go to; default :func:`default_cache_dir` (``$UAP_CACHE_DIR`` …); created if
                 absent. After a failed download that got some bytes, ``<name>.part`` stays there for the next
                 fetch to resume (never under the final name).
    search_dirs: folders looked in first for a copy of that name (``$UAP_WEIGHTS_DIR``, ``$UAP_DATA_DIR``, …);
                 a copy is used in place, never copied; one with the wrong size or checksum is passed over.
    progress:    ``progress(done_bytes, total_bytes)`` while downloading (see :class:`ProgressCallback`);
                 ``"auto"`` (default): a tqdm bar when stderr is a terminal, else silence; ``None``: silence.
    retries:     further attempts per URL after a transient failure (reset, timeout, short read, HTTP 5xx/429),
                 each resuming where the last stopped, after ``backoff`` · 2^k seconds (k = 0, 1, …, at most 30 s).
                 An unreachable host (name not resolved, connection refused, no route, no answer to the
                 connection within ``timeout``) or an HTTP 4xx goes to the next URL at once: retrying it would
                 not help, and offline must fail fast.
    timeout:     seconds a connection or a single read may stall (a stalled read is retried, resuming).
    manual_hint: how a user puts the file there by hand, for the error message (e.g. "set UAP_WEIGHTS_DIR or
                 pass --weights FILE").

    Raises :class:`ChecksumError` when the bytes served do not match the pin (nothing is kept), and
    :class:`DownloadError` for every other failure; both with one-line messages.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("retries and backoff must be >= 0 and timeout > 0")
    search_dirs = [d for d in search_dirs if str(d)]
    cache_path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = locate(remote, search_dirs, cache_path)
    if found is not None:
        return found

    places = ", ".join(str(p) for p in _places(remote, search_dirs, cache_path))
    hint = f"; {manual_hint}" if manual_hint else ""
    where = (f"{remote.title} ({remote.name}, {remote.size_text}) is not in {places}")

    try:
        cache_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(_one_line(f"{where}, and the cache folder cannot be created ({_describe(exc)}): "
                                      f"set {CACHE_ENV} to a writable folder{hint}")) from None
    final = cache_path / remote.name
    part = cache_path / f"{remote.name}.part"
    with _exclusive(cache_path / f"{remote.name}.lock"):
        if _is_verified(cache_path, remote, final):  # another thread or process fetched it meanwhile
            return final
        final.unlink(missing_ok=True)  # a wrong file under the final name (cache corruption): never kept
        existing = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(cache_path).free
        if free < remote.size - existing:
            raise DownloadError(_one_line(f"{where}, and {cache_path} has {_human_size(free)} free: set "
                                          f"{CACHE_ENV} to a folder with room{hint}"))
        failures: list[str] = []
        mismatch = False
        stale_part = existing > 0  # a part file left by an earlier, interrupted fetch
        urls = remote_urls(remote)
        with _progress_callback(progress, remote) as callback:
            report = _Reporter(callback, remote.size)
            for url in urls:
                for attempt in range(retries + 1):
                    try:
                        _transfer(url, part, remote, timeout, report)
                        _verify_part(part, remote)
                    except _Transient as exc:
                        if attempt == retries:
                            failures.append(f"{url} ({exc}; {retries + 1} attempts)")
                        else:
                            time.sleep(min(backoff * 2 ** attempt, 30.0))
                        continue
                    except _Skip as exc:
                        failures.append(f"{url} ({exc})")
                        break
                    except _Mismatch as exc:
                        part.unlink(missing_ok=True)
                        if stale_part and attempt < retries:  # the old part file may be the culprit: afresh
                            stale_part = False
                            continue
                        failures.append(f"{url} (the file served is not the pinned one: {exc})")
                        mismatch = True
                        break
                    except OSError as exc:  # writing the part file: disk full, permissions
                        part.unlink(missing_ok=True)
                        raise DownloadError(_one_line(f"{where}, and writing {part} failed ({_describe(exc)}): "
                                                      f"set {CACHE_ENV} to a writable folder{hint}")) from None
                    try:
                        os.replace(part, final)
                    except OSError as exc:
                        raise DownloadError(_one_line(f"{where}, and moving {part} into place failed "
                                                      f"({_describe(exc)}){hint}")) from None
                    _remember_verified(cache_path, remote, final)
                    return final
        if mismatch or (part.exists() and part.stat().st_size == 0):
            part.unlink(missing_ok=True)  # kept only when it holds bytes a later fetch can resume from
        kind = ChecksumError if mismatch else DownloadError
        raise kind(_one_line(f"{where}, and downloading it failed: {'; '.join(failures)}; download it by hand "
                             f"from {remote.urls[0]} into one of those folders{hint}"))


def _human_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover
