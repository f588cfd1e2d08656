"""Shared helpers of the UI tests (AppTest and the browser test): paths, a saved test UAP, waiting for runs."""

from __future__ import annotations

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


def save_test_uap(library_dir: Path, name: str = "test-uap", size: int = 224, eps: float = 10 / 255,
                  seed: int = 0) -> Path:
    """A random ±eps sign pattern saved in a library folder, with metadata and a short metric history."""
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
    metadata = {"model": "efficientnet_lite0", "algorithm": "sga", "eps": eps, "norm": "linf", "seed": seed,
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
def streamlit_server(work: Path, env: dict[str, str], start_seconds: float = 60.0) -> Iterator[tuple[str, int]]:
    """``streamlit run app.py`` headless on a free local port with ``env`` added to this process's environment;
    yields (url, process id) once ``/_stcore/health`` answers, and stops the process on exit. Its log is
    ``work/server.log`` (shown when it fails to start, and named at the end)."""
    import pytest

    port = free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false", **env}
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
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
