"""Shared helpers of the UI tests (AppTest and the browser test): paths, a saved test UAP, waiting for runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent

PAGES = {"home": ROOT / "app.py", "generate": ROOT / "pages" / "1_Generate.py",
         "inspect": ROOT / "pages" / "2_Inspect.py", "transfer": ROOT / "pages" / "3_Transfer.py",
         "library": ROOT / "pages" / "4_Library.py"}


# A screenshot waits for a stable frame. With two live runs on the page and the other pytest-xdist worker driving 20
# browsers (the load test), a frame can take longer than Playwright's 30 s default on CI's 2 cores: wait longer.
SCREENSHOT_TIMEOUT_MS = 180_000


# The same for an action (a click, a fill, an upload, a navigation): Playwright's 30 s default is too short on CI's 2
# cores beside the load test (a CI run timed out waiting for a file input); an action that can go on goes on at once.
ACTION_TIMEOUT_MS = 120_000


def patient(target: Any) -> Any:
    """``target`` (a Playwright browser context or page, sync or async API) with its actions allowed to wait up to
    ACTION_TIMEOUT_MS; returns it."""
    target.set_default_timeout(ACTION_TIMEOUT_MS)
    return target


def screenshot(target: Any, path: Path | str) -> None:
    """Save a screenshot of ``target`` (a Playwright page or locator) to ``path``, waiting up to 3 minutes."""
    target.screenshot(path=str(path), timeout=SCREENSHOT_TIMEOUT_MS)


def save_test_uap(library_dir: Path, name: str = "test-uap", size: int = 224, eps: float = 10 / 255,
                  seed: int = 0, model: str = "efficientnet_lite0") -> Path:
    """A random ±eps sign pattern saved in a library folder, with metadata (made for ``model``) and a short metric
    history."""
    from uap_core.library import UAPLibrary

    generator = torch.Generator().manual_seed(seed)
    delta = (torch.randint(0, 2, (3, size, size), generator=generator).float() * 2 - 1) * eps
    history = [{"kind": "start", "step": 0, "epoch": 0, "elapsed": 0.0, "random_fooling_ratio": 0.1}]
    for step in range(1, 6):
        history.append({"kind": "step", "step": step, "epoch": 1, "elapsed": step * 0.1, "loss": 1.0 / step,
                        "batch_fooling_ratio": 0.1 * step, "grad_cosine": 0.5, "quantisation_error": 0.2,
                        "sign_ops": step})
        history.append({"kind": "eval", "step": step, "epoch": 1, "elapsed": step * 0.1,
                        "fooling_ratio": 0.1 * step})
    metadata = {"model": model, "algorithm": "sga", "eps": eps, "norm": "linf", "seed": seed,
                "summary": {"fooling_ratio": 0.5, "random_fooling_ratio": 0.1}, "history": history}
    entry = UAPLibrary(library_dir).save(name, delta, metadata, overwrite=True)
    return entry.path


def plotly_specs(at) -> list[dict[str, Any]]:
    """The Plotly figures of an AppTest run, as dicts."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def figure_titled(at, fragment: str) -> dict[str, Any]:
    """The first Plotly figure whose title contains ``fragment``."""
    for spec in plotly_specs(at):
        title = spec.get("layout", {}).get("title", {})
        text = title.get("text", "") if isinstance(title, dict) else str(title)
        if fragment.lower() in text.lower():
            return spec
    raise AssertionError(f"no chart titled like {fragment!r}; titles: "
                         f"{[s.get('layout', {}).get('title') for s in plotly_specs(at)]}")


def status_lines(at) -> list[str]:
    """The run status lines (they carry a state badge)."""
    return [m.value for m in at.markdown if "-badge[" in m.value]


def wait_for_runs(at, timeout: float = 120.0, poll: float = 0.5) -> list[str]:
    """Rerun the AppTest until no run is running or queued (run_every never fires under AppTest)."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        lines = status_lines(at)
        if lines and not any("running]" in line or "queued" in line for line in lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"runs did not finish within {timeout} s: {lines}")
        time.sleep(poll)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(work: Path, env: dict[str, str], start_seconds: float = 60.0,
                     port: int | None = None) -> Iterator[tuple[str, int]]:
    """``streamlit run app.py`` headless on a free local port (or ``port``) with ``env`` added to this process's
    environment; yields (url, process id) once ``/_stcore/health`` answers, and stops the process on exit. Its log
    is ``work/server.log`` (shown when it fails to start, and named at the end; a second server in the same folder
    appends to it)."""
    import pytest

    port = port or free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **env}
    log_path = work / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        print(f"server log: {log_path}")


class StreamlitSession:
    """One browser session as the server sees it: Streamlit's websocket protocol (protobuf BackMsg / ForwardMsg),
    doing what the frontend does — a first script run, button clicks as trigger widget states, the live fragment
    rerun at the interval the server's ``auto_rerun`` message asks for — and keeping what was drawn."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/_stcore/stream"
        self.query = ""
        self.page_hash = ""
        self.buttons: dict[str, str] = {}
        self.texts: list[str] = []
        self.metrics: dict[str, str] = {}
        self.exceptions: list[str] = []
        self.auto: tuple[float, str] | None = None
        self.finished = asyncio.Event()
        self.fragment_runs = 0

    async def open(self, timeout: float = 120) -> float:
        """Connect and run the page once; the seconds until its script run finished (every element sent)."""
        import websockets

        started = time.monotonic()
        self.socket = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=2**27)
        self.reader = asyncio.create_task(self._read())
        await self.rerun()
        await asyncio.wait_for(self.finished.wait(), timeout)
        return time.monotonic() - started

    async def rerun(self, click: str | None = None, fragment_id: str = "") -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        message = BackMsg()
        state = message.rerun_script
        state.query_string = self.query
        state.page_script_hash = self.page_hash
        if click is not None:
            widget = state.widget_states.widgets.add()
            widget.id = self.buttons[click]
            widget.trigger_value = True
        if fragment_id:
            state.fragment_id = fragment_id
            state.is_auto_rerun = True
        self.finished.clear()
        await self.socket.send(message.SerializeToString())

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        async for raw in self.socket:
            message = ForwardMsg()
            message.ParseFromString(raw)
            kind = message.WhichOneof("type")
            if kind == "new_session":  # sent at the start of every script run, fragment runs too
                self.page_hash = message.new_session.page_script_hash
            elif kind == "navigation":  # a full script run (the page's own st.rerun() too): timers anew
                self.auto = None
            elif kind == "page_info_changed":
                self.query = message.page_info_changed.query_string
            elif kind == "auto_rerun":
                self.auto = (message.auto_rerun.interval, message.auto_rerun.fragment_id)
            elif kind == "stop_auto_rerun":
                self.auto = None
            elif kind == "script_finished":
                self.finished.set()
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                which = element.WhichOneof("type")
                if which == "button":
                    self.buttons[element.button.label] = element.button.id
                elif which == "markdown":
                    self.texts.append(element.markdown.body)
                elif which == "heading":
                    self.texts.append(element.heading.body)
                elif which == "metric":
                    self.metrics[element.metric.label] = element.metric.body
                elif which == "exception":
                    self.exceptions.append(element.exception.message)

    def drew(self, fragment: str) -> bool:
        return any(fragment in text for text in self.texts)

    async def follow_demo(self, timeout: float) -> float:
        """Poll the live view like the browser until the demo's results are drawn; the seconds it took."""
        started = time.monotonic()
        while not (self.drew("What the perturbation does") and "Held-out fooling ratio" in self.metrics):
            assert time.monotonic() - started < timeout, f"no finished demo within {timeout} s: {self.texts[-3:]}"
            assert not self.exceptions, self.exceptions
            auto = self.auto
            await asyncio.sleep(auto[0] if auto else 0.2)
            if auto is not None and self.auto == auto and self.finished.is_set():
                self.fragment_runs += 1
                await self.rerun(fragment_id=auto[1])
                try:  # a fragment a full rerun replaced meanwhile is skipped by the server without an answer
                    await asyncio.wait_for(self.finished.wait(), 30)
                except asyncio.TimeoutError:
                    self.finished.set()
        return time.monotonic() - started

    async def close(self) -> None:
        await self.socket.close()
        self.reader.cancel()
