"""The image source "cifar10-test" (uap_core.datasets) without the network: a small synthetic CIFAR-10 binary
archive (20 records in the real format, under the real member and file names) served by a local HTTP server through
UAP_DOWNLOAD_MIRROR, pinned by a test Remote handed to ``cifar10_test_npz(remote=…)`` — downloaded, checked,
converted and cached once, its pixels and labels decoded against the bytes written; the real pin refuses that
archive; offline the CLI prints one line and exits 2."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from uap_core import images
from uap_core.datasets import (CIFAR10_TEST, CIFAR10_TEST_NPZ, META_MEMBER, TEST_BATCH_MEMBER, cifar10_test_npz,
                               find_cifar10_test, read_cifar10_binary)
from uap_core.download import CIFAR10_BINARY, DownloadError, Remote
from uap_core.errors import ImageSourceError
from uap_core.images import load_images, open_stream, should_stream

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECORDS = 20


def _records(count: int = RECORDS) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(labels (N,), planes (N, 3, 32, 32) uint8 as R, G, B, the test_batch.bin bytes: per record 1 label byte,
    then the R plane, the G plane and the B plane, each 32 rows of 32)."""
    labels = (np.arange(count) * 7 + 3) % 10
    planes = np.random.default_rng(0).integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    raw = b"".join(bytes([int(label)]) + plane.tobytes() for label, plane in zip(labels, planes))
    return labels, planes, raw


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cifar_archive(raw: bytes) -> bytes:
    """The layout of cifar-10-binary.tar.gz, plus a member whose name would escape a folder if it were extracted."""
    return _archive({
        "cifar-10-batches-bin/data_batch_1.bin": bytes(3073 * 3),  # a training batch: never read
        "../escape.bin": b"must never be written anywhere",
        META_MEMBER: ("\n".join(CLASSES) + "\n\n").encode(),
        TEST_BATCH_MEMBER: raw,
        "cifar-10-batches-bin/readme.html": b"<html></html>",
    })


def _test_remote(payload: bytes) -> Remote:
    """The real entry with the synthetic archive's size and SHA-256: the documented test hook of cifar10_test_npz."""
    return dataclasses.replace(CIFAR10_BINARY, sha256=hashlib.sha256(payload).hexdigest(), md5=None,
                               size=len(payload))


class _Server:
    """A local HTTP server of one folder, recording the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(folder)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(server, archive bytes, labels, planes, raw test batch): the synthetic archive served under its real name;
    an empty cache, no UAP_DATA_DIR."""
    labels, planes, raw = _records()
    payload = _cifar_archive(raw)
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / CIFAR10_BINARY.name).write_bytes(payload)
    monkeypatch.setenv("UAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("UAP_DATA_DIR", raising=False)
    server = _Server(folder)
    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", server.base)
    yield server, payload, labels, planes, raw
    server.close()


def test_downloaded_once_converted_and_decoded_in_rgb_order(served, tmp_path, monkeypatch):
    server, payload, labels, planes, raw = served
    remote = _test_remote(payload)
    cache = tmp_path / "cache"
    progress: list[tuple[int, int]] = []
    npz = cifar10_test_npz(progress=lambda done, total: progress.append((done, total)), remote=remote)
    assert server.paths == [f"/{CIFAR10_BINARY.name}"]
    assert progress[0] == (0, len(payload)) and progress[-1] == (len(payload), len(payload))
    assert npz.parent == cache and npz.name.startswith(CIFAR10_TEST)
    # the archive is gone once converted; no part file, no temp file, nothing the escaping member named
    assert sorted(p.name for p in cache.iterdir() if p.is_file() and not p.name.endswith(".lock")) == [npz.name]
    assert not list(tmp_path.rglob("escape.bin"))

    with np.load(npz, allow_pickle=False) as z:
        assert set(z.files) == {"x", "y", "classes"}
        x, y, classes = z["x"], z["y"], z["classes"]
    assert x.dtype == np.uint8 and x.shape == (RECORDS, 32, 32, 3) and y.dtype == np.int64
    assert y.tolist() == labels.tolist() and classes.tolist() == CLASSES
    assert np.array_equal(x, planes.transpose(0, 2, 3, 1))
    # straight from the format: record i's pixel (row r, column c) is R at 1 + 32r + c, G 1024 further, B 2048
    for i, r, c in ((0, 0, 0), (3, 5, 17), (RECORDS - 1, 31, 31)):
        start = i * 3073 + 1 + 32 * r + c
        assert tuple(x[i, r, c]) == (raw[start], raw[start + 1024], raw[start + 2048])

    server.close()
    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", _dead_url())
    assert cifar10_test_npz(remote=remote) == npz, "the second call finds the cached .npz and opens no URL"
    assert find_cifar10_test(remote) == npz and find_cifar10_test() is None, "named after the archive's pin"


def test_the_symbolic_source_downloads_and_then_reads_the_cache(served, monkeypatch):
    """load_images("cifar10-test") goes through cifar10_test_npz (here handed the test Remote): the first load
    downloads and converts, a second one (and a stream) only reads the cached .npz."""
    server, payload, labels, planes, _ = served
    monkeypatch.setattr(images, "cifar10_test_npz", functools.partial(cifar10_test_npz, remote=_test_remote(payload)))
    first = load_images(CIFAR10_TEST, 32, 32)
    assert torch.equal(first.pixels, torch.from_numpy(planes)) and first.labels.tolist() == labels.tolist()
    assert len(server.paths) == 1
    again = load_images(" cifar10-test ", 32, 32, limit=5)
    stream = open_stream(CIFAR10_TEST, 32, 32)
    assert len(server.paths) == 1, "no URL opened once the .npz is cached"
    assert torch.equal(again.pixels, first.pixels[:5]) and len(stream) == RECORDS
    assert torch.equal(stream.decode().pixels, first.pixels)
    assert not should_stream("auto", CIFAR10_TEST)


def test_a_npz_in_uap_data_dir_is_used_and_the_real_pin_refuses_other_archives(served, tmp_path, monkeypatch):
    server, payload, labels, planes, _ = served
    data = tmp_path / "data"
    data.mkdir()
    (data / CIFAR10_BINARY.name).write_bytes(payload)  # the synthetic archive under the real name
    monkeypatch.setenv("UAP_DATA_DIR", str(data))
    with pytest.raises(DownloadError) as refused:  # neither the local copy nor the served one matches the pin
        load_images(CIFAR10_TEST, 32, 32)
    message = str(refused.value)
    assert "\n" not in message and CIFAR10_BINARY.name in message and str(data) in message
    assert not (tmp_path / "cache" / CIFAR10_BINARY.name).exists() and find_cifar10_test() is None

    np.savez(data / CIFAR10_TEST_NPZ, x=planes.transpose(0, 2, 3, 1), y=labels, classes=np.array(CLASSES))
    requests = len(server.paths)
    loaded = load_images(CIFAR10_TEST, 32, 32)
    assert torch.equal(loaded.pixels, torch.from_numpy(planes)) and str(data) in loaded.source
    assert len(server.paths) == requests


def test_archives_without_a_readable_test_batch_are_one_line_errors(tmp_path):
    cases = {
        "no_test_batch.tar.gz": _archive({META_MEMBER: b"a\nb\n"}),
        "torn_records.tar.gz": _archive({META_MEMBER: b"a\nb\n", TEST_BATCH_MEMBER: bytes(3073 + 5)}),
        "label_beyond_classes.tar.gz": _archive({META_MEMBER: b"a\nb\n", TEST_BATCH_MEMBER: b"\x07" + bytes(3072)}),
        "not_gzip.tar.gz": b"plain bytes, not an archive",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageSourceError) as info:
            read_cifar10_binary(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value), name


def test_offline_the_cli_prints_one_line_and_exits_2(tmp_path):
    """``python -m uap_core generate --images cifar10-test`` with no server anywhere: exit 2, one ``error:`` line
    naming the archive, where it was looked for and how to put it there; no traceback; nothing left in the cache."""
    from uap_core.models.cifar_resnet import resnet20

    weights = tmp_path / "resnet20.th"
    torch.save(resnet20().state_dict(), weights)  # any weights: the model loads before the images
    env = {**os.environ, "UAP_CACHE_DIR": str(tmp_path / "cache"), "UAP_DOWNLOAD_MIRROR": _dead_url(),
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("UAP_DATA_DIR", None)
    done = subprocess.run([sys.executable, "-m", "uap_core", "generate", "--model", "cifar_resnet20", "--weights",
                           str(weights), "--images", CIFAR10_TEST, "--device", "cpu", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needed in (CIFAR10_BINARY.name, str(tmp_path / "cache"), "UAP_DATA_DIR", "--images", CIFAR10_TEST_NPZ):
        assert needed in lines[0], (needed, lines[0])
    left = sorted(p.name for p in (tmp_path / "cache").glob("*") if p.is_file())
    assert left in ([], [CIFAR10_BINARY.name + ".lock"]), left


def test_study_defaults_are_the_symbolic_source(capsys):
    """Every study's default image source is "cifar10-test", and ``study NAME --help`` shows that name, not a path
    of a development checkout."""
    from uap_core.__main__ import main
    from uap_core.params import describe
    from uap_core.studies import get_study, study_names

    for name in study_names():
        defaults = {spec["name"]: spec["default"] for spec in describe(get_study(name).Settings)}
        assert defaults["images"] == CIFAR10_TEST, name
    with pytest.raises(SystemExit) as exited:
        main(["study", "images_needed", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0 and "(default cifar10-test)" in shown and "cifar10-test-2000" not in shown
