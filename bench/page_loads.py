"""Page-load times of the app under ``streamlit run``: p50 / p95 / max seconds for N sessions opening the Home page at
once, optionally while the classroom demo runs — what tests/test_class_server.py used to bound by a wall-clock
assertion (5 s, flaky on a loaded machine); the test now checks that the pages load, this measures how fast.

A page load is what a browser's first visit costs the server: a websocket session (Streamlit's protocol, as the
frontend speaks it) asks for the first script run, and the load ends when the server reports that run finished,
every element sent. An HTTP GET of the page (the static frontend) is timed beside it.

    python -m bench.page_loads                              # 20 sessions at once, 3 rounds, from the repository root
    python -m bench.page_loads --sessions 40 --rounds 5 --classroom
    python -m bench.page_loads --demo                       # the loads while one session runs the demo (a class)
    python -m bench.page_loads --json results.json

Run from the repository root with ``python -m`` (it reuses the tests' server helper, tests/ui_helpers.py). Needs the
dev requirements (streamlit, websockets, pytest). The first script run of a fresh server imports torch and the
models: it is measured apart ("first load") and not counted in the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.ui_helpers import StreamlitSession, save_test_uap, streamlit_server

DEMO_BUTTON = "Run the demo"


def http_get_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return time.monotonic() - started


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0–1) by linear interpolation between the sorted values."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    return {"count": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
            "max": max(values), "mean": statistics.fmean(values)}


async def measure(url: str, sessions: int, rounds: int, demo: bool, timeout: float) -> dict:
    warm = StreamlitSession(url)
    first_load = await warm.open(timeout)
    if demo:  # one session runs the demo; the rounds load pages while it computes
        assert DEMO_BUTTON in warm.buttons, f"no {DEMO_BUTTON!r} button on the Home page: {list(warm.buttons)}"
        await warm.rerun(click=DEMO_BUTTON)
    else:
        await warm.close()
    loads: list[float] = []
    per_round: list[dict] = []
    failures: list[str] = []
    for _ in range(rounds):
        visitors = [StreamlitSession(url) for _ in range(sessions)]
        seconds = await asyncio.gather(*(v.open(timeout) for v in visitors))
        failures += [e for v in visitors for e in v.exceptions]
        failures += [f"no {DEMO_BUTTON!r} button drawn" for v in visitors if DEMO_BUTTON not in v.buttons]
        await asyncio.gather(*(v.close() for v in visitors))
        loads += seconds
        per_round.append(summary(list(seconds)))
    if demo:
        await warm.close()
    http = [await asyncio.to_thread(http_get_seconds, url) for _ in range(5)]
    return {"sessions": sessions, "rounds": rounds, "during_demo": demo, "first_load_seconds": first_load,
            "page_load_seconds": summary(loads), "per_round": per_round, "http_get_seconds": summary(http),
            "failures": failures, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions opening the page at once (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="times the sessions open the page (default 3)")
    parser.add_argument("--demo", action="store_true", help="measure while one session runs the classroom demo")
    parser.add_argument("--classroom", action="store_true", help="serve in classroom mode (UAP_CLASSROOM=1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one page load may take at most")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="uap-page-loads-") as folder:
        work = Path(folder)
        library = work / "library"
        save_test_uap(library, "bench-uap")
        env = {"UAP_LIBRARY_DIR": str(library)}
        if args.classroom:
            env["UAP_CLASSROOM"] = "1"
        with streamlit_server(work, env) as (url, _pid):
            figures = asyncio.run(measure(url, args.sessions, args.rounds, args.demo, args.timeout))
    loads, http = figures["page_load_seconds"], figures["http_get_seconds"]
    print(f"{args.sessions} sessions × {args.rounds} rounds{' during the demo' if args.demo else ''}: page load "
          f"p50 {loads['p50']:.2f} s, p95 {loads['p95']:.2f} s, max {loads['max']:.2f} s "
          f"(first load of the fresh server {figures['first_load_seconds']:.1f} s); HTTP GET p50 {http['p50']:.3f} s; "
          f"load average {figures['load_average']:.1f} on {figures['cpus']} cores")
    for i, round_figures in enumerate(figures["per_round"], 1):
        print(f"  round {i}: p50 {round_figures['p50']:.2f} s, p95 {round_figures['p95']:.2f} s, "
              f"max {round_figures['max']:.2f} s")
    if figures["failures"]:
        print(f"failures: {figures['failures'][:5]}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
