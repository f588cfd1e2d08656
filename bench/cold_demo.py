"""The classroom demo on a cold server: seconds from pressing "Run the demo" until the page shows the first
held-out fooling ratio, with and without the server warming the demo when the Home page opens
(:func:`uap_ui.runview.warm`; ``UAP_WARM_DEMO=0`` turns it off).

Each round starts a fresh ``streamlit run app.py`` (nothing cached, no model loaded), opens the Home page as a
browser does (a websocket session speaking Streamlit's protocol), waits ``--think`` seconds — a person reading the
page before they click — presses "Run the demo" and follows the live view at the interval the page asks for, until
its status line reads "held-out fooling ratio". The time includes the page's polling (a point computed between two
polls is seen at the next one): it is what the person sees. Cold and warm rounds alternate, side by side.

    python -m bench.cold_demo                      # 3 rounds each, 3 s of reading, from the repository root
    python -m bench.cold_demo --rounds 5 --think 0 --json cold_demo.json

Needs the dev requirements (streamlit, websockets, pytest: it reuses tests/ui_helpers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.ui_helpers import StreamlitSession, streamlit_server

BUTTON = "Run the demo"
FIRST_POINT = "held-out fooling ratio **"


async def first_point_seconds(url: str, think: float, timeout: float) -> dict[str, float]:
    """Open Home, wait ``think`` s, click, follow the live view until the first held-out point is drawn."""
    session = StreamlitSession(url)
    first_load = await session.open(timeout)
    await asyncio.sleep(think)
    clicked = time.monotonic()
    await session.rerun(click=BUTTON)
    try:
        while not any(FIRST_POINT in text for text in session.texts):
            if time.monotonic() - clicked > timeout:
                raise TimeoutError(f"no held-out point within {timeout} s; last texts {session.texts[-3:]}")
            if session.exceptions:
                raise RuntimeError(session.exceptions)
            auto = session.auto
            await asyncio.sleep(auto[0] if auto else 0.1)
            if auto is not None and session.auto == auto and session.finished.is_set():
                await session.rerun(fragment_id=auto[1])
                try:
                    await asyncio.wait_for(session.finished.wait(), 30)
                except asyncio.TimeoutError:
                    session.finished.set()
        return {"first_load": first_load, "first_point": time.monotonic() - clicked}
    finally:
        await session.close()


def one_round(warm: bool, think: float, timeout: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        env = {"UAP_WARM_DEMO": "1" if warm else "0", "UAP_LIBRARY_DIR": str(Path(work) / "library")}
        with streamlit_server(Path(work), env) as (url, _pid):
            return asyncio.run(first_point_seconds(url, think, timeout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh servers per mode (default 3)")
    parser.add_argument("--think", type=float, default=3.0,
                        help="seconds between the page's load and the click (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for index in range(args.rounds):
        for mode in ("cold", "warm"):
            measured = one_round(mode == "warm", args.think, args.timeout)
            results[mode].append(measured)
            print(f"round {index + 1} {mode}: first page load {measured['first_load']:.1f} s, click → first held-out "
                  f"point {measured['first_point']:.1f} s", flush=True)
    print(f"\nclick → first held-out point ({args.rounds} fresh servers each, {args.think:g} s of reading before the "
          f"click; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}):")
    for mode, rows in results.items():
        values = [row["first_point"] for row in rows]
        print(f"  {mode:4}: median {statistics.median(values):.1f} s, max {max(values):.1f} s  "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"think": args.think, **results}, indent=2))


if __name__ == "__main__":
    main()
