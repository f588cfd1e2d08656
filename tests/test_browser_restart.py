"""The app across a restart of its server, under a real Chromium page (uap_ui/runstore.py, uap_ui/shutdown.py).

On the Generate page: one small run finishes, a second is going when the server gets SIGTERM (``streamlit run
app.py``'s own stop); its exit hook checkpoints the running run (the periodic checkpoint is an hour away, so the file
on disk is the SIGTERM's). A new server on the same port under the same page: the finished result is still there,
the other run is shown "interrupted" at its checkpoint's step; Resume continues from that step (not from 0) and
finishes (at its time limit, counted across the restart). EfficientNet-Lite0 on the embedded samples at 64 px: the
cheapest setup the page offers without a download.
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from test_browser import TALL, browser, open_page, screenshot_folder, shot, wait_loaded  # noqa: F401 - fixtures
from ui_helpers import free_port, patient, screenshot, streamlit_server

__all__ = ["browser", "screenshot_folder"]

STEPS = 1000  # epochs (one step each on the 13 fit photos) of the run that the restart interrupts: it ends by
LIMIT = 16  # its time limit (seconds of running, counted across the restart), whatever the machine's speed


def line(page, state: str):
    """The status line of the run in ``state`` (its badge's word)."""
    return page.locator("[data-testid='stMarkdownContainer']").filter(has_text=re.compile(rf"{state}.*seed \d+"))


def set_run_settings(page, **values: str) -> None:
    labels = {"input_size": "Input size (0 = the model's)", "epochs": "Epochs (0 = the algorithm's)",
              "max_seconds": "Time limit, s (0 = none)"}
    for name, value in values.items():
        field = page.get_by_label(labels[name], exact=True)
        field.fill(value)
        field.press("Enter")
        wait_loaded(page)


def exited(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has ended (a zombie counts: its parent reaps it later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.1)
    return False


def test_a_restart_under_the_page_keeps_the_result_and_resumes_the_interrupted_run(browser, screenshot_folder,
                                                                                  tmp_path):
    import os

    from playwright.sync_api import expect

    from uap_core.checkpoint import load_checkpoint

    library = tmp_path / "library"
    env = {"UAP_LIBRARY_DIR": str(library), "UAP_SHARED_KEEP_SECONDS": "0", "UAP_CHECKPOINT_SECONDS": "3600"}
    port = free_port()
    context = patient(browser.new_context())
    try:
        started = time.monotonic()
        with streamlit_server(tmp_path, env, port=port) as (url, pid):
            print(f"server up after {time.monotonic() - started:.1f} s")
            page = open_page(context, f"{url}/Generate", TALL)
            page.get_by_text("Run settings").click()
            set_run_settings(page, input_size="64", epochs="1")
            page.locator("button", has_text="Start").first.click()
            expect(line(page, "finished")).to_have_count(1, timeout=90_000)
            set_run_settings(page, epochs=str(STEPS), max_seconds=str(LIMIT))
            page.locator("button", has_text="Start").first.click()
            expect(line(page, "running")).to_contain_text(re.compile(rf"step ([3-9]|\d\d)/{STEPS}"), timeout=90_000)
            seen = int(re.search(r"step (\d+)/", line(page, "running").inner_text()).group(1))
            address = page.url
            os.kill(pid, signal.SIGTERM)
            print(f"SIGTERM at step {seen} after {time.monotonic() - started:.1f} s")
            assert exited(pid, 60), "the server ended after SIGTERM"
            print(f"server ended after {time.monotonic() - started:.1f} s")
        log = (tmp_path / "server.log").read_text()
        assert "writing the checkpoints of 1 run(s)" in log
        [checkpoint] = list(library.glob(".runs/w-*/*.checkpoint"))
        saved = load_checkpoint(checkpoint).step
        print(f"the page showed step {seen} at SIGTERM; the checkpoint holds step {saved}")
        assert seen <= saved, "a fresh checkpoint: written at SIGTERM, at or after the step the page showed"

        with streamlit_server(tmp_path, env, port=port):
            print(f"second server up after {time.monotonic() - started:.1f} s")
            page.goto(address)  # the same address (its ?ws=…) on the restarted server
            wait_loaded(page)
            print(f"page loaded after {time.monotonic() - started:.1f} s")
            expect(line(page, "finished")).to_have_count(1, timeout=30_000)
            expect(line(page, "interrupted")).to_contain_text(f"step {saved}/{STEPS}")
            expect(page.get_by_text(f"Its checkpoint of step {saved}/{STEPS}")).to_be_visible()
            expect(page.get_by_text("Held-out fooling ratio").first).to_be_visible()  # the finished result's panel
            page.wait_for_timeout(500)
            shot(page, "restart-2-after-restart")
            panel = page.locator("[data-testid='stExpander']").filter(has_text="Interrupted when the server stopped")
            screenshot(panel, screenshot_folder / "restart-2b-interrupted-panel.png")

            print(f"restarted, interrupted run shown after {time.monotonic() - started:.1f} s")
            page.get_by_role("button", name="Resume").click()
            resumed_at = time.monotonic()
            expect(line(page, "running|finished").first).to_contain_text(f"resumed from step {saved}",
                                                                          timeout=60_000)
            print(f"resumed run running after {time.monotonic() - resumed_at:.1f} s")
            expect(line(page, "finished")).to_have_count(2, timeout=120_000)
            expect(line(page, "interrupted")).to_have_count(0)
            resumed = line(page, "finished").filter(has_text="resumed from step")
            last = int(re.search(r"step (\d+)/", resumed.inner_text()).group(1))
            assert last > saved, "the resumed run went on from its checkpoint's step"
            expect(resumed).to_contain_text("(time limit)")  # it ran to its end
            wait_loaded(page)
            page.wait_for_timeout(500)
            shot(page, "restart-3-resumed-and-finished")
            print(f"resumed run finished after {time.monotonic() - started:.1f} s")
        assert not list(library.glob(".runs/w-*/*.checkpoint")), "the finished run's checkpoint is removed"
        assert len(list(library.glob(".runs/w-*/*.result"))) == 2
    finally:
        context.close()
