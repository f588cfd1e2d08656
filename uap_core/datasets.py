"""Data sets fetched on demand: the CIFAR-10 test set, the image source ``cifar10-test``.

:func:`cifar10_test_npz` returns a local ``.npz`` of the 10,000 CIFAR-10 test images — arrays ``x`` (10000, 32,
32, 3) uint8 RGB, ``y`` (10000,) int64 class indices, ``classes`` (10,) class names: what
:func:`uap_core.images.load_npz` reads — looking, in order, for

1. ``$UAP_DATA_DIR/cifar10-test.npz``: a file a user put there (any labelled ``.npz`` of that layout; used as is);
2. the converted copy in the download cache (:func:`uap_core.download.default_cache_dir`), named after the
   archive's checksum (``cifar10-test-<digest>.npz``), made once by an earlier call;
3. the archive ``cifar-10-binary.tar.gz`` (:data:`uap_core.download.CIFAR10_BINARY`, 170 MB, pinned by the MD5 the
   official page states) in ``$UAP_DATA_DIR`` or the cache, else downloaded into the cache by
   :func:`uap_core.download.fetch` (progress, resume, retries, checksum) — then converted into (2).

The conversion reads ``cifar-10-batches-bin/test_batch.bin`` (10,000 records of 1 label byte + 3,072 pixel bytes:
the 32×32 red plane, then green, then blue, each row by row) and ``cifar-10-batches-bin/batches.meta.txt`` (the
class names, one a line) from the tar by their member names, in memory: nothing is extracted to disk (so no
member name can write outside a folder) and nothing is unpickled (the binary version of the archive, not the
python one). The ``.npz`` is written atomically (:mod:`uap_core.atomic`): a reader sees no file or the whole file.

The archive is deleted from the cache once the ``.npz`` is made: the project reads only its test batch (30.7 MB
of its 170 MB; the 50,000 training images are never used), the ``.npz`` holds all of that, and keeping both would
leave 200 MB in the cache for 30 MB of use. An archive a user put in ``$UAP_DATA_DIR`` is never touched.

Offline with none of these: a :class:`~uap_core.download.DownloadError` (a :class:`~uap_core.errors.UAPError`)
whose one line names the file, the folders looked in, and how to put it there (``$UAP_DATA_DIR``, ``--images``).

Only :func:`cifar10_test_npz`'s ``remote`` argument can change what is fetched and checked: tests hand it a
:class:`~uap_core.download.Remote` pinning a small synthetic archive of the same format (served under the real
file name through ``$UAP_DOWNLOAD_MIRROR``). The symbolic source (:func:`uap_core.images.load_images`) always uses
the real pin, and the cached ``.npz`` is named after the pinned digest, so a copy made from another archive is
never taken for the real one.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from .atomic import write_files_atomically
from .download import CACHE_ENV, CIFAR10_BINARY, DownloadError, ProgressCallback, Remote, default_cache_dir, fetch
from .errors import ImageSourceError, first_line

__all__ = [
    "CIFAR10_TEST", "CIFAR10_TEST_NPZ", "DATA_DIR_ENV", "cifar10_test_npz", "data_dirs", "find_cifar10_test",
    "read_cifar10_binary",
]

CIFAR10_TEST = "cifar10-test"  # the symbolic image source (load_images, RunConfig.images, --images, studies)
CIFAR10_TEST_NPZ = "cifar10-test.npz"  # the converted file's name in $UAP_DATA_DIR
DATA_DIR_ENV = "UAP_DATA_DIR"
TEST_BATCH_MEMBER = "cifar-10-batches-bin/test_batch.bin"
META_MEMBER = "cifar-10-batches-bin/batches.meta.txt"
SIDE = 32  # CIFAR images are 32×32 pixels
RECORD_BYTES = 1 + 3 * SIDE * SIDE  # one label byte, then the R, G and B planes
_MAX_TEST_BATCH_BYTES = 20_000 * RECORD_BYTES  # refuse a member far larger than the 10,000 records it should hold
_MAX_META_BYTES = 1 << 16


def data_dirs() -> list[Path]:
    """Folders a user filled by hand with data sets: ``$UAP_DATA_DIR`` when set, else none."""
    folder = os.environ.get(DATA_DIR_ENV, "").strip()
    return [Path(folder).expanduser()] if folder else []


def _cached_npz(remote: Remote, cache: Path) -> Path:
    """Where the ``.npz`` converted from ``remote``'s archive lies in the cache: named after its pinned digest."""
    return cache / f"{CIFAR10_TEST}-{remote.digest[:12]}.npz"


def find_cifar10_test(remote: Remote = CIFAR10_BINARY,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The ``.npz`` of the CIFAR-10 test set if one is already here (``$UAP_DATA_DIR/cifar10-test.npz``, then the
    converted copy in the cache), else ``None``; opens no URL and reads no archive (cheap: for a page that tells
    what a study needs before it starts)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    for candidate in [*(d / CIFAR10_TEST_NPZ for d in data_dirs()), _cached_npz(remote, cache)]:
        if candidate.is_file():
            return candidate
    return None


def cifar10_test_npz(progress: ProgressCallback | Literal["auto"] | None = "auto",
                     remote: Remote = CIFAR10_BINARY,
                     cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The path of a ``.npz`` of the CIFAR-10 test set, fetched and converted once (see the module docstring).

    progress:  called as ``progress(done_bytes, total_bytes)`` while the archive downloads (a page's progress bar);
               ``"auto"``: a tqdm bar when stderr is a terminal; ``None``: silence. Not called when nothing is
               downloaded.
    remote:    the archive to fetch and check; :data:`~uap_core.download.CIFAR10_BINARY` except in tests, which
               pass a :class:`~uap_core.download.Remote` of a small synthetic archive in the same format.
    cache_dir: the download cache (default :func:`~uap_core.download.default_cache_dir`).

    Raises :class:`~uap_core.download.DownloadError` (offline, checksum mismatch, …) and
    :class:`~uap_core.errors.ImageSourceError` (an archive without a readable test batch, an unwritable cache),
    each with a one-line message.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = find_cifar10_test(remote, cache)
    if found is not None:
        return found
    searched = data_dirs()
    folder = f"${DATA_DIR_ENV} ({searched[0]})" if searched else f"a folder and set {DATA_DIR_ENV} to it"
    hint = (f"or put {remote.name} or {CIFAR10_TEST_NPZ} (arrays x: N×32×32×3 uint8 RGB, y: N labels) in {folder}"
            f", or pass --images FILE.npz|FOLDER instead of {CIFAR10_TEST}")
    archive = fetch(remote, cache, search_dirs=searched, progress=progress, manual_hint=hint)
    target = _cached_npz(remote, cache)
    try:
        x, y, classes = read_cifar10_binary(archive)
    except FileNotFoundError:  # another process converted it and removed the archive meanwhile
        if target.is_file():
            return target
        raise DownloadError(f"{archive} disappeared while it was being read; run again") from None
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, classes=classes)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_files_atomically({target: buffer.getvalue()})
    except OSError as exc:
        raise ImageSourceError(f"cannot write the CIFAR-10 test set to {target} ({exc.strerror or first_line(exc)}):"
                               f" set {CACHE_ENV} to a writable folder, {hint}") from None
    if not any(archive.parent.resolve() == d.resolve() for d in searched):  # a user's own copy stays
        archive.unlink(missing_ok=True)
    return target


def read_cifar10_binary(archive: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, classes) of the test batch of a CIFAR-10 binary archive (``.tar.gz``), read in memory.

    x: (N, 32, 32, 3) uint8 RGB; y: (N,) int64 class indices; classes: (C,) str class names (C = 10 for CIFAR-10);
    N = the number of 3,073-byte records in ``test_batch.bin`` (10,000 in the real archive). Members are found by
    their exact names (a leading ``./`` allowed); only regular files are read, none is written anywhere.
    Raises :class:`~uap_core.errors.ImageSourceError` naming the archive when it is not such an archive.
    """
    path = Path(archive)
    wanted = {TEST_BATCH_MEMBER: _MAX_TEST_BATCH_BYTES, META_MEMBER: _MAX_META_BYTES}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|gz") as tar:  # a stream: one pass over the archive, no seeking back
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name not in wanted or name in found or not member.isfile():
                    continue
                if member.size > wanted[name]:
                    raise ImageSourceError(f"{path}: {name} holds {member.size} bytes, more than a CIFAR-10 "
                                           f"archive's ({wanted[name]} at most)")
                handle = tar.extractfile(member)
                found[name] = handle.read(member.size) if handle is not None else b""
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ImageSourceError(f"{path}: not a readable CIFAR-10 binary archive (.tar.gz): {first_line(exc)}") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ImageSourceError(f"{path}: not a CIFAR-10 binary archive: no {' or '.join(missing)} in it")
    raw = found[TEST_BATCH_MEMBER]
    if not raw or len(raw) % RECORD_BYTES:
        raise ImageSourceError(f"{path}: {TEST_BATCH_MEMBER} holds {len(raw)} bytes, not a whole number of "
                               f"{RECORD_BYTES}-byte records (1 label byte + 32×32 R, G, B)")
    classes = [line.strip() for line in found[META_MEMBER].decode("utf-8", "replace").splitlines() if line.strip()]
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    y = records[:, 0].astype(np.int64)
    if not classes or int(y.max()) >= len(classes):
        raise ImageSourceError(f"{path}: labels up to {int(y.max())} but {META_MEMBER} names {len(classes)} classes")
    # each record's pixels: the R plane (32 rows of 32), then G, then B -> (N, 3, 32, 32) -> (N, 32, 32, 3)
    x = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return x, y, np.array(classes, dtype=str)
