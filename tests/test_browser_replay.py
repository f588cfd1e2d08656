"""A recorded race replayed in a real browser (``streamlit run app.py`` + Playwright with Debian's Chromium, as
tests/test_browser.py): Home → "Replay a recorded run" → 100× → Play, to the end; the last point of every run on the
held-out fooling ratio chart must be the recorded value. Screenshot: test-artifacts/screenshots/replay-home.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ui_helpers import ROOT, patient, screenshot, streamlit_server

CHROMIUM = Path(os.environ.get("UAP_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
TALL = {"width": 1400, "height": 2600}

CHART_DATA = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
    title: (el.layout && el.layout.title && el.layout.title.text) || '',
    traces: (el.data || []).map(t => ({name: t.name, y: Array.from(t.y || []), showlegend: t.showlegend}))}))"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)", pytrace=False)
    pytest.skip(reason)


def test_replay_plays_to_the_end_on_the_recorded_values(tmp_path):
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright (Python) is not installed")
    from uap_core.recording import list_recordings, races, shipped_recordings_dir

    race = list(races(list_recordings(shipped_recordings_dir())).values())[0]  # the one Home shows first
    expected = {r.title: r.final_fooling_ratio for r in race}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    env = {"UAP_LIBRARY_DIR": str(tmp_path / "library"), "UAP_SHIPPED_DIR": str(tmp_path / "no-zoo")}
    with streamlit_server(tmp_path, env) as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = patient(browser.new_page(viewport=TALL))
            page.goto(url)
            expect(page.locator("[data-testid='stApp'][data-test-script-state='notRunning']")).to_have_count(
                1, timeout=60_000)
            page.get_by_text("Replay a recorded run").click()
            expect(page.get_by_text("Recorded run — not live").first).to_be_visible(timeout=30_000)
            page.locator("[data-testid='stSelectbox']").filter(has_text="Speed").click()
            page.get_by_role("option", name="100× recorded").click()
            expect(page.locator("[data-testid='stApp'][data-test-script-state='notRunning']")).to_have_count(
                1, timeout=30_000)
            play = page.locator(".st-key-home_replay_play button")
            play.click()
            expect(play).to_contain_text("Pause", timeout=10_000)
            seconds = max(r.seconds for r in race) / 100
            # back to "Play" when the replay has reached its end
            expect(play).to_contain_text("Play", timeout=(seconds + 30) * 1000)
            screenshot(page, SCREENSHOTS / "replay-home.png")
            expect(page.get_by_text(f"{race[0].seconds:.0f} s of {race[0].seconds:.0f} s")).to_be_visible(
                timeout=10_000)
            charts = page.evaluate(CHART_DATA)
            held_out = [c for c in charts if "Held-out fooling ratio" in c["title"]]
            assert held_out, [c["title"] for c in charts]
            last = {t["name"]: t["y"][-1] for t in held_out[-1]["traces"] if t["showlegend"] is not False}
            assert last == pytest.approx(expected)
            screenshot(page, SCREENSHOTS / "replay-home.png")
            assert page.locator("[data-testid='stException']").count() == 0
        finally:
            browser.close()
