"""A fresh clone's user, as the issue tells it: no ../shared, an empty home, the download hosts replaced by a local
HTTP server started here (no network) — the Studies page's CIFAR-10 setup says what it needs (a weights download
and the 170 MB archive, with sizes), downloads both on Run through uap_core.download (st.progress fed byte by
byte, a broken connection resumed, checksums, the archive converted into the cache, no partial file left), then
runs the study to its figure.
A corrupt archive is refused with one line and nothing left in the cache; with no server at all the page shows one
line and keeps the form, and the CLI prints one line and exits 2 without a traceback.

What tests/test_download.py (resume after a cut, retry after a 500, a stale part, two threads) and
tests/test_datasets.py (the archive's format, the symbolic source, the real pin refusing another archive) cover is
not repeated. Small stand-ins: a synthetic CIFAR-10 archive of 20 records and a randomly initialised ResNet-20,
served under the real file names and pinned by test Remotes (the documented test hooks)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from test_datasets import _cifar_archive, _dead_url, _records, _test_remote
from ui_helpers import ROOT
from uap_core import datasets, images
from uap_core.download import CIFAR10_BINARY, CIFAR10_RESNET20
from uap_core.models import builtin
from uap_core.studies import needs as needs_module
from uap_ui import studyview

PAGE = ROOT / "pages" / "5_Studies.py"
PREFIX = "study_images_needed_"


@pytest.fixture(autouse=True)
def no_menu(monkeypatch):
    from uap_ui import nav

    monkeypatch.setattr(nav, "menu", lambda: None)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """An empty home (hence an empty download cache and torch hub), no ../shared, no data or weights folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("UAP_SHARED_DIR", str(tmp_path / "no-shared"))  # what a clone without ../shared sees
    for name in ("UAP_CACHE_DIR", "UAP_DATA_DIR", "UAP_WEIGHTS_DIR", "XDG_CACHE_HOME", "TORCH_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home / ".cache" / "uap_explorer"


class _Server:
    """A local HTTP server of one folder that honours Range requests and, for the names in ``cut_once``, closes
    the first connection halfway through the body (an interrupted download). Records (path, Range header)."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((self.path, self.headers.get("Range")))
                path = folder / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get(
                    "Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _weights_bytes() -> bytes:
    from uap_core.models.cifar_resnet import resnet20

    buffer = io.BytesIO()
    torch.save(resnet20().state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def hosts(tmp_path, monkeypatch, fresh_home):
    """The archive and the weights served under their real names; the pins they are checked against replaced by
    test Remotes of these files (the archive through cifar10_test_npz's remote, the weights in the CIFAR table).
    Yields (server, folder served, archive bytes, its pin)."""
    _, _, raw = _records()
    archive, weights = _cifar_archive(raw), _weights_bytes()
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / CIFAR10_BINARY.name).write_bytes(archive)
    (folder / CIFAR10_RESNET20.name).write_bytes(weights)
    archive_pin = _test_remote(archive)
    weights_pin = dataclasses.replace(CIFAR10_RESNET20, sha256=hashlib.sha256(weights).hexdigest(),
                                      size=len(weights))
    monkeypatch.setitem(builtin._CIFAR_REMOTES, "cifar_resnet20", weights_pin)
    fetch_archive = functools.partial(datasets.cifar10_test_npz, remote=archive_pin)
    monkeypatch.setattr(datasets, "cifar10_test_npz", fetch_archive)
    monkeypatch.setattr(images, "cifar10_test_npz", fetch_archive)
    monkeypatch.setattr(needs_module, "CIFAR10_BINARY", archive_pin)
    server = _Server(folder)
    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", server.base)
    yield server, folder, archive, archive_pin
    server.close()


def _page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    assert not at.exception, at.exception
    return at


def _tiny(at: AppTest) -> None:
    at.multiselect(key=PREFIX + "methods").set_value(["sgd_uap"])
    at.text_input(key=PREFIX + "fit_sizes").set_value("2,4")
    at.text_input(key=PREFIX + "seeds").set_value("0")
    at.number_input(key=PREFIX + "holdout").set_value(10)
    at.number_input(key=PREFIX + "epochs").set_value(1)
    at.number_input(key=PREFIX + "min_steps").set_value(1)
    at.text_input(key=PREFIX + "device").set_value("cpu")


def _run(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Run the study").click().run()


def _needs_text(at: AppTest) -> str:
    return next(m.value for m in at.markdown if "This study needs" in m.value)


def _cache_files(cache) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".json")))


def test_the_studies_page_downloads_what_it_needs_then_runs(hosts, fresh_home, monkeypatch):
    server, _, archive, pin = hosts
    reported: list[tuple[str, int, int]] = []
    real_fetch = studyview.fetch_needs

    def spying_fetch(needs, progress=None):  # the page's st.progress callback, seen on its way through
        def both(what, done, total):
            reported.append((what, done, total))
            progress(what, done, total)

        return real_fetch(needs, progress=both)

    monkeypatch.setattr(studyview, "fetch_needs", spying_fetch)
    at = _page()
    assert at.radio(key="study_setup").value == "cifar10"
    needs = _needs_text(at)  # before anything starts: what, how large, downloaded once
    assert "cifar_resnet20" in needs and CIFAR10_RESNET20.name in needs and "downloaded once" in needs
    assert CIFAR10_BINARY.name in needs and "2,000 of the 10,000" in needs
    assert server.paths == [], "nothing is fetched before Run"

    _tiny(at)
    server.cut_once.add(CIFAR10_BINARY.name)  # the archive's first connection breaks halfway: resumed by a Range
    _run(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    archive_requests = [r for p, r in server.requests if p == f"/{CIFAR10_BINARY.name}"]
    assert archive_requests == [None, f"bytes={len(archive) // 2}-"], server.requests
    assert server.paths.count(f"/{CIFAR10_RESNET20.name}") == 1
    by_file = {what: [(done, total) for w, done, total in reported if w == what] for what, _, _ in reported}
    assert by_file[datasets.CIFAR10_TEST][-1] == (len(archive), len(archive))
    assert by_file["cifar_resnet20"][-1][0] == by_file["cifar_resnet20"][-1][1] > 0
    # the archive converted and removed, the weights kept; no part file, nothing half-written
    assert _cache_files(fresh_home) == sorted([CIFAR10_RESNET20.name, datasets.find_cifar10_test(pin).name])

    _wait_for_the_figure(at)
    assert not at.error, [e.value for e in at.error]
    assert "cached" in _needs_text(at) and "ready" in _needs_text(at), "now nothing to download"


def _wait_for_the_figure(at, seconds: float = 120) -> None:
    """Rerun the page until the study's figure is drawn and no progress bar is left (no exception on the way)."""
    deadline = time.monotonic() + seconds
    while not at.get("plotly_chart") or at.get("progress"):
        assert time.monotonic() < deadline, [p.proto.text for p in at.get("progress")]
        time.sleep(0.3)
        at.run()
        assert not at.exception, at.exception


def test_a_corrupt_archive_or_no_server_is_one_line_and_the_form_is_kept(hosts, fresh_home, monkeypatch):
    server, folder, archive, pin = hosts
    broken = bytearray(archive)
    broken[len(broken) // 2] ^= 0xFF
    (folder / CIFAR10_BINARY.name).write_bytes(bytes(broken))
    at = _page()
    _tiny(at)
    _run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and CIFAR10_BINARY.name in errors[0], errors
    assert not at.exception and not at.get("plotly_chart")
    assert CIFAR10_BINARY.name not in _cache_files(fresh_home) and datasets.find_cifar10_test(pin) is None
    assert at.text_input(key=PREFIX + "fit_sizes").value == "2,4", "the form keeps what was typed"

    server.close()
    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", _dead_url())
    _run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and CIFAR10_BINARY.name in errors[0], errors
    assert "UAP_DATA_DIR" in errors[0] and not at.exception
    assert at.number_input(key=PREFIX + "holdout").value == 10
    assert [n for n in _cache_files(fresh_home) if n.endswith(".part") or n.startswith(".")] == []


def test_offline_the_study_cli_prints_one_line_and_exits_2(fresh_home, monkeypatch, capsys):
    """``uap study images_needed`` (its defaults) from an empty home, no ../shared, no server (in this process:
    the command's own ``main``): the first thing it lacks, ResNet-20's weights, named in one error line with where
    it was looked for and how to put it there; exit 2, no traceback, nothing left in the cache."""
    from uap_core.__main__ import main

    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", _dead_url())
    code = main(["study", "images_needed", "--device", "cpu", "--out", str(fresh_home.parent / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(line.startswith(("error: ", "[")) for line in err.splitlines() if line), err
    for needed in (CIFAR10_RESNET20.name, str(fresh_home), "UAP_WEIGHTS_DIR", "--weights"):
        assert needed in errors[0], (needed, errors[0])
    assert "no-shared" not in errors[0] and "shared" not in errors[0], "no development folder is named"
    assert not [p for p in fresh_home.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_the_lite0_setup_runs_offline_on_the_embedded_samples(fresh_home, tmp_path, monkeypatch):
    """The other setup, side by side with CIFAR-10: EfficientNet-Lite0 on the user's images. A folder with too few
    images is refused before the start (one line: how many are needed, how many it holds); the embedded samples
    need nothing downloaded, and a tiny study runs to its figure without any server."""
    monkeypatch.setenv("UAP_DOWNLOAD_MIRROR", _dead_url())
    at = _page()
    at.radio(key="study_setup").set_value("lite0").run()
    lite = "study_lite0_images_needed_"
    assert at.text_input(key=lite + "model").value == "efficientnet_lite0"
    assert at.text_input(key=lite + "fit_sizes").value == "2,5,10", "the setup's small defaults"
    assert not [t for t in at.text_input if t.key and t.key.endswith("images_needed_images")], "a picker instead"

    few = tmp_path / "few"
    few.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 40), (60 * i, 90, 200)).save(few / f"photo{i}.png")
    at.radio(key="study_src_images_kind").set_value("folder").run()
    at.text_input(key="study_src_folder").set_value(str(few)).run()
    _run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "22 needed" in errors[0] and "holds 3" in errors[0], errors

    at.radio(key="study_src_images_kind").set_value("samples").run()
    needs = _needs_text(at)
    assert "efficientnet_lite0: ready" in needs and "of the 25 in the embedded samples" in needs
    assert "download" not in needs.replace(":material/download:", "")
    at.text_input(key=lite + "fit_sizes").set_value("1,2")
    at.text_input(key=lite + "device").set_value("cpu")
    at.number_input(key=lite + "holdout").set_value(2)
    at.number_input(key=lite + "epochs").set_value(1)
    at.number_input(key=lite + "min_steps").set_value(1)
    _run(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    _wait_for_the_figure(at)
    assert not at.error, [e.value for e in at.error]
    assert not list(fresh_home.parent.rglob("*.part")) and not fresh_home.exists(), "nothing fetched"
