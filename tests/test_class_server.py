"""A class on one server: ``streamlit run app.py`` in classroom mode (UAP_CLASSROOM=1, so every browser is a
visitor) with a mixed class of 20 real Chromium pages at once — one Chromium process, one browser context per
visitor, each on its own ``?ws=`` address (its own workspace and library space):

- 5 press "Run the demo" on Home (identical requests: they share one run),
- 5 race SGA against SGD-UAP on Generate (the classroom preset off: CIFAR-10 ResNet-20 on the CIFAR .npz, one
  epoch — the Lite0 preset did not finish within 300 s under load; identical requests shared the same way) and each
  saves a result to the library,
- 5 upload their own photo (a different one each) in Inspect's "Your own photo" under the owner's saved UAP,
- 3 run a small study on Studies (images_needed on CIFAR-10 ResNet-20: 2 fit sizes, 1 seed, 100 held-out
  images, 3 steps),
- 2 compute a transfer table on Transfer (the owner's UAP on EfficientNet-Lite0 and Lite1, 10 sample images).

The server runs UAP_MAX_RUNS = 2 jobs at once (uap_ui/scheduler.py), so runs wait in its queue. Then the
isolation rules of uap_ui/spaces.py: a visitor cannot delete or rename the owner's entries without the password,
cannot read folders outside the allowed ones, cannot upload more than the limit; their saves go to their own space.

Held to by the load test (it prints its figures; the README's class-server section quotes them):

- every session ends with its result: the demo shows its held-out fooling ratio (not held to beat noise here: its
  45 s limit stops it after a few steps under this load; tests/test_demo.py holds that claim), the same in all five
  (one shared run, watched by several pages at once); the race shows both methods finished with their held-out
  fooling ratios, the results section and a save confirmed; the photo shows "Label flipped"/"Not fooled" and two
  top-5 tables of five confidences each; the study its figure, its table and its JSON with one row per fit size
  and method; the transfer table its heatmap and a CSV row for the owner's UAP with a fooling ratio in [0, 1] for
  both models; no page shows an exception;
- the queue positions shown are right: the places a page shows ("in queue: 3rd, …") never rise, end in a start
  (the result comes), and the places seen across the class run from 1st without a gap, two runs of one page
  never sharing a place; at least one page waited (the slot limit bites);
- page response: the seconds from a visitor's action (navigation, click, upload, save) until the page shows its
  reaction (the page's main widget drawn; the run's status line; the photo's top-5 tables; the study's progress;
  the transfer's progress or table; "Saved as"). Its p95 is held under RESPONSE_P95_SECONDS;
- the server's resident memory (/proc/<pid>/status VmRSS, sampled every 0.5 s) peaks under RSS_LIMIT_MB and
  grows by at most RSS_GROWTH_MB over its level after a first page load;
- no library entry is lost or mixed between visitors: on disk each racing visitor's space (the folder named by the
  hash of its ``?ws=`` token) holds exactly the entry it saved, no other visitor has a folder, and the owner's
  library is unchanged.

Measured (``python -m pytest -n 0 tests/test_class_server.py -k mixed -s``: 302 s) on 2 cores and 23 GB shared
with other agents' jobs (load average 5.0 before, 11.6 after): page response p50 9.3 s, p95 24.8 s (33.8 s and
37.6 s in runs at load averages 8–22), the photo upload the slowest; results after the action: photo 25–28 s,
demo 60–69 s, study 78–181 s, transfer 133–175 s, race 160–172 s; queue places from 1st up to 6 → 5 → … → 1; all
finished 290 s after the start; server VmRSS 728 MB warm, peak 1,837 MB (up to 2,190 MB in the loaded runs). The
bounds above leave about 1.6× margin over the worst measurement.

All 20 are real Chromium pages: 20 pages loading at once timed out (Page.goto over 30 s at a load average of 22);
three at a time they all opened within 110–136 s (median page load 11–12 s) and then ran side by side to the end.
The demo keeps its 45-s time limit: on a machine loaded far beyond its cores (load average above 20) it can stop
after too few steps to beat random noise, which this test then reports; the server warms the demo when its Home page
is first opened, as a class server does, and the time limit never ends a run before its first step (one CI-like run
had the demo's preparation alone outlast the 45 s, and five pages showed "0 steps").
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ui_helpers import PAGES, ROOT, patient, save_test_uap, streamlit_server

KINDS = {"demo": 5, "race": 5, "photo": 5, "study": 3, "transfer": 2}
CLICK_SPREAD_SECONDS = 4.0  # the 20 visitors act within this, in an interleaved order of kinds
OPENING = 3  # pages loading at once while the class opens its pages
OPEN_SECONDS = 400  # all 20 pages must be open within this
RESULT_SECONDS = 300  # each visitor must see its result within this after its action
MAX_RUNS = 2  # the server's slot limit: jobs beyond it wait in the queue
RESPONSE_P95_SECONDS = 60.0  # measured 37.6 s at a load average of 14–22 on 2 cores (see the docstring)
RSS_GROWTH_MB = 2000  # measured 1,462 MB over the warm level (see the docstring)
RSS_LIMIT_MB = 3000  # measured peak 2,190 MB
OWNER_PASSWORD = "correct horse battery staple"
CHROMIUM = Path(os.environ.get("UAP_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 2400}  # Streamlit scrolls in its own container: a tall window shows it all
SAMPLE_SECONDS = 1.5  # how often a following visitor reads its page (queue places, the result)
FAILURES = ROOT / "test-artifacts" / "load"  # a failed visitor's screenshot and page text, to see why
PHOTOS = ["imagenet_00_243.jpg", "imagenet_01_559.jpg", "imagenet_02_438.jpg", "imagenet_03_990.jpg",
          "imagenet_04_949.jpg"]
QUEUE = re.compile(r"in queue: (\d+)(?:st|nd|rd|th)")
STATUS = re.compile(r"(running|queued|finished|stopped|failed).*seed \d+")


_T0 = time.monotonic()


def _log(visitor: "Visitor", what: str) -> None:
    """A progress line (shown with -s): when each visitor reached each step."""
    print(f"{time.monotonic() - _T0:7.1f} s  {visitor.kind} {visitor.index}: {what}", flush=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _percent(text: str) -> float:
    match = re.fullmatch(r"(\d+)%", text.strip())
    assert match, f"not a percentage: {text!r}"
    return int(match.group(1)) / 100


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# ---------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def class_server(tmp_path_factory, cifar_npz):
    """``streamlit run app.py`` in classroom mode (UAP_CLASSROOM=1: even this machine's browsers are visitors), two
    runs at once, an owner's library holding one entry, two allowed folders (one empty, the CIFAR-10 .npz's);
    stopped by its process id."""
    work = tmp_path_factory.mktemp("class")
    library = work / "owner-library"
    save_test_uap(library, "owner-uap")
    allowed = work / "shared-images"
    allowed.mkdir()
    env = {"UAP_LIBRARY_DIR": str(library), "UAP_SHIPPED_DIR": str(work / "no-zoo"), "UAP_CLASSROOM": "1",
           "UAP_ALLOWED_FOLDERS": os.pathsep.join([str(allowed), str(cifar_npz.parent)]),
           "UAP_VISITOR_DIR": str(work / "visitors"), "UAP_OWNER_PASSWORD": OWNER_PASSWORD,
           "UAP_MAX_RUNS": str(MAX_RUNS),
           "UAP_WARM_DEMO": "1"}  # as a class server runs (the suite turns the warming off for its other servers)
    with streamlit_server(work, env) as (url, pid):
        yield {"url": url, "pid": pid, "library": library, "allowed": allowed, "work": work,
               "visitors": work / "visitors", "cifar_npz": cifar_npz, "log": work / "server.log"}


# ---------------------------------------------------------------------------------------------- a visitor
@dataclass
class Visitor:
    """One Chromium page of the class: what it did, what it saw, how long the page took to react."""

    kind: str
    index: int
    token: str
    page: object = None
    responses: list[tuple[str, float]] = field(default_factory=list)  # (action, seconds until the page reacted)
    places: list[tuple[float, tuple[int, ...]]] = field(default_factory=list)  # (time, queue places shown)
    texts: list[str] = field(default_factory=list)  # status lines seen
    acted_at: float = 0.0
    finished_after: float = 0.0
    result: dict = field(default_factory=dict)

    async def timed(self, action: str, do, reaction, timeout: float = RESULT_SECONDS) -> None:
        """Do ``do()`` and wait until the ``reaction`` locator is visible: one page response."""
        started = time.monotonic()
        await do()
        await reaction.first.wait_for(state="visible", timeout=timeout * 1000)
        self.responses.append((action, time.monotonic() - started))

    async def sample(self) -> None:
        """Read the page now: the queue places it shows (one per waiting job: its caption, or where a page has
        none — Studies — the place in its progress bar's text) and its status lines."""
        seen = await self.page.evaluate(_READ_PAGE)
        places = tuple(int(m.group(1)) for text in ([c for c in seen["captions"] if QUEUE.search(c)]
                                                    or [seen["text"]]) for m in QUEUE.finditer(text))
        if places:
            self.places.append((time.monotonic(), places))
        self.texts.extend(line for line in seen["text"].splitlines() if STATUS.search(line))

    async def follow(self, done, count: int = 1) -> None:
        """Read the page every SAMPLE_SECONDS until ``count`` elements of ``done`` (a locator) are visible or
        RESULT_SECONDS pass."""
        while True:
            await self.sample()
            if await done.count() >= count and await done.nth(count - 1).is_visible():
                break
            assert time.monotonic() - self.acted_at < RESULT_SECONDS, \
                f"{self.kind} {self.index}: no result within {RESULT_SECONDS} s: {self.texts[-3:]}"
            await asyncio.sleep(SAMPLE_SECONDS)
        self.finished_after = time.monotonic() - self.acted_at
        _log(self, f"result after {self.finished_after:.1f} s")
        await self.sample()


_READ_PAGE = """() => {
    const main = document.querySelector("[data-testid='stMain']");
    const captions = [...main.querySelectorAll("[data-testid='stCaptionContainer']")].map((e) => e.innerText);
    return {text: main.innerText, captions: captions};
}"""


async def _loaded(page, timeout: float = 120_000) -> None:
    """Streamlit connected, its script run over, no lazy widget left to draw."""
    await page.locator("[data-testid='stApp'][data-test-connection-state='CONNECTED']").wait_for(timeout=timeout)
    await page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(timeout=timeout)


async def _download(page, button: str) -> bytes:
    async with page.expect_download(timeout=60_000) as info:
        await page.get_by_role("button", name=button).first.click()
    download = await info.value
    return Path(await download.path()).read_bytes()


async def _open(visitor: Visitor, url: str, path: str, ready, opening: asyncio.Semaphore) -> None:
    """Navigate to the page and wait for its main widget; OPENING pages load at once (20 pages parsing Streamlit's
    bundle together on 2 cores time out)."""
    async with opening:
        _log(visitor, "opening")
        await visitor.timed("open", lambda: visitor.page.goto(f"{url}/{path}?ws={visitor.token}", timeout=180_000),
                            ready(visitor.page), timeout=180)
        await _loaded(visitor.page)


# one coroutine per kind: open (before the start signal), act (at its turn), follow to the result, check it
async def _demo(v: Visitor, url: str, server: dict, go) -> None:
    page = v.page
    await _open(v, url, "", lambda p: p.get_by_role("button", name="Run the demo"), server["opening"])
    await go(v)
    await v.timed("click", lambda: page.get_by_role("button", name="Run the demo").click(),
                  page.locator("[data-testid='stMarkdownContainer']").filter(has_text=STATUS))
    await v.follow(page.get_by_text("What the perturbation does"))
    await _loaded(page)
    metrics = {}
    for label in ("Held-out fooling ratio", "Random noise, same eps", "Steps"):
        value = page.locator("[data-testid='stMetric']").filter(has_text=label).locator(
            "[data-testid='stMetricValue']").first
        metrics[label] = (await value.inner_text(timeout=120_000)).strip()
    v.result = metrics


async def _race(v: Visitor, url: str, server: dict, go) -> None:
    """Generate → Race methods with the classroom preset off: the form's model (CIFAR-10 ResNet-20), images (the
    CIFAR-10 .npz: 1,000 to fit, 1,000 held out) and one epoch each — the cheapest race the page allows."""
    page = v.page
    await _open(v, url, "Generate", lambda p: p.get_by_role("button", name="Start", exact=True), server["opening"])
    await page.get_by_role("combobox", name="Model").click()
    await page.keyboard.type("ResNet-20")
    await page.get_by_role("option", name=re.compile(r"ResNet-20 \(CIFAR-10\)")).first.click()
    await _loaded(page)
    await page.get_by_text("CIFAR-style .npz").click()
    await _loaded(page)
    path = page.get_by_label(".npz path", exact=True)
    await path.fill(str(server["cifar_npz"]))
    await path.press("Enter")
    await _loaded(page)
    await page.get_by_text("Run settings").click()
    epochs = page.get_by_label("Epochs (0 = the algorithm's)", exact=True)
    await epochs.fill("1")
    await epochs.press("Enter")
    await _loaded(page)
    await page.get_by_text("Race methods").click()
    await page.get_by_text("A race starts the methods", exact=False).wait_for()
    await page.get_by_text("Classroom race preset").click()
    await _loaded(page)
    await go(v)
    status = page.locator("[data-testid='stMarkdownContainer']").filter(has_text=STATUS)
    await v.timed("click", lambda: page.get_by_role("button", name="Race SGA vs SGD-UAP", exact=True).click(),
                  status)
    await v.follow(status.filter(has_text="finished"), count=2)
    await _loaded(page)
    lines = [(await status.nth(i).inner_text()) for i in range(await status.count())]
    name = f"race-{v.index}"
    await page.get_by_label("Name in the library", exact=True).first.fill(name)
    await v.timed("save", lambda: page.get_by_role("button", name="Save to the library").first.click(),
                  page.get_by_text(f"Saved as {name}"), timeout=60)
    v.result = {"status": lines, "saved": name}


async def _photo(v: Visitor, url: str, server: dict, go) -> None:
    page = v.page
    await _open(v, url, "Inspect", lambda p: p.get_by_role("heading", name="Your own photo"), server["opening"])
    await go(v)
    photo = Path(__import__("foolbox").__file__).parent / "data" / PHOTOS[v.index]
    await v.timed("upload", lambda: page.locator("input[type='file']").first.set_input_files(str(photo)),
                  page.get_by_text("Top-5, perturbed"))
    await v.follow(page.locator("table[data-uap-top5='perturbed']"))
    await _loaded(page)
    v.result = {"verdict": await page.get_by_text(re.compile("Label flipped:|Not fooled:")).first.inner_text()}
    for kind in ("clean", "perturbed"):
        cells = page.locator(f"table[data-uap-top5='{kind}'] td[data-uap-confidence]")
        v.result[kind] = [(await cells.nth(i).inner_text()).strip() for i in range(await cells.count())]


async def _study(v: Visitor, url: str, server: dict, go) -> None:
    page = v.page
    await _open(v, url, "Studies", lambda p: p.get_by_role("button", name="Run the study"), server["opening"])
    for label, value in {"Images": str(server["cifar_npz"]), "Fit sizes": "10,20", "Seeds": "0",
                         "Holdout": "100", "Min steps": "3", "Device": "cpu"}.items():
        await page.get_by_label(label, exact=True).fill(value)
    await go(v)
    await v.timed("click", lambda: page.get_by_role("button", name="Run the study").click(),
                  page.locator("[data-testid='stProgress']").or_(
                      page.get_by_role("button", name="Everything (.json)")))
    await v.follow(page.get_by_role("button", name="Everything (.json)"))
    await _loaded(page)
    v.result = {"figures": await page.locator(".js-plotly-plot").count(),
                "tables": await page.locator("[data-testid='stDataFrame']").count(),
                "json": json.loads(await _download(page, "Everything (.json)"))}


async def _transfer(v: Visitor, url: str, server: dict, go) -> None:
    page = v.page
    await _open(v, url, "Transfer", lambda p: p.get_by_role("button", name="Compute the table"), server["opening"])
    limit = page.get_by_label("At most this many images", exact=True)
    await limit.fill("10")
    await limit.press("Enter")
    await _loaded(page)
    await go(v)
    await v.timed("click", lambda: page.get_by_role("button", name="Compute the table").click(),
                  page.locator("[data-testid='stProgress']").or_(page.locator(".js-plotly-plot")))
    await v.follow(page.locator(".js-plotly-plot .heatmaplayer"))
    await _loaded(page)
    rows = list(csv.reader(io.StringIO((await _download(page, "Table (.csv)")).decode())))
    v.result = {"csv": rows, "tables": await page.locator("[data-testid='stDataFrame']").count()}


async def _keep_failure(v: Visitor) -> None:
    """Save what a failed visitor's page showed (screenshot, its main text, Streamlit's connection and script
    state) under FAILURES, so that a failure on CI says why."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    stem = FAILURES / f"{v.kind}-{v.index}"
    with contextlib.suppress(Exception):
        state = await v.page.evaluate("""() => {
            const app = document.querySelector("[data-testid='stApp']");
            return {url: location.href, connection: app && app.dataset.testConnectionState,
                    script: app && app.dataset.testScriptState, text: document.body.innerText};
        }""")
        stem.with_suffix(".txt").write_text(json.dumps(state, indent=1))
        _log(v, f"failed; page state in {stem}.txt: connection {state['connection']}, script {state['script']}")
    with contextlib.suppress(Exception):
        await v.page.screenshot(path=str(stem.with_suffix(".png")), timeout=60_000)


SCRIPTS = {"demo": _demo, "race": _race, "photo": _photo, "study": _study, "transfer": _transfer}


# ---------------------------------------------------------------------------------------------- the load test
@pytest.mark.load
def test_a_mixed_class_of_twenty_browsers(class_server):
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (CI must run the class test)")
        pytest.skip(f"{CHROMIUM} is missing")
    pytest.importorskip("playwright")
    asyncio.run(_mixed_class(class_server))


async def _mixed_class(server: dict) -> None:
    from playwright.async_api import async_playwright

    from ui_helpers import StreamlitSession

    server = {**server, "opening": asyncio.Semaphore(OPENING)}
    url, pid = server["url"], server["pid"]
    owner_files = sorted(p.name for p in server["library"].iterdir())
    warm = StreamlitSession(url)
    first_load = await warm.open()  # the first script run imports torch & co.: not a page response under load
    await warm.close()
    rss_warm = _rss_mb(pid)
    rss: list[float] = [rss_warm]
    load_before = os.getloadavg()
    done = asyncio.Event()

    async def sample_memory() -> None:
        while not done.is_set():
            rss.append(_rss_mb(pid))
            await asyncio.sleep(0.5)

    # the order of action: the kinds interleaved (demo, race, study, transfer, photo, demo, …)
    visitors = [Visitor(kind, i, f"class-{kind}-{i:02d}") for i in range(max(KINDS.values()))
                for kind in ("demo", "race", "study", "transfer", "photo") if i < KINDS.get(kind, 0)]
    assert len(visitors) == 20
    opened: list[Visitor] = []
    all_open = asyncio.Event()
    start_at: list[float] = []

    async def go(visitor: Visitor) -> None:
        """Wait until every page is open, then act at this visitor's turn."""
        _log(visitor, "open")
        opened.append(visitor)
        if len(opened) == len(visitors):
            start_at.append(time.monotonic() + 0.5)
            all_open.set()
        await asyncio.wait_for(all_open.wait(), OPEN_SECONDS)
        turn = visitors.index(visitor)
        await asyncio.sleep(max(0.0, start_at[0] + turn * CLICK_SPREAD_SECONDS / len(visitors) - time.monotonic()))
        visitor.acted_at = time.monotonic()
        _log(visitor, "acts")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        memory = asyncio.create_task(sample_memory())
        started = time.monotonic()
        try:
            for visitor in visitors:
                context = patient(await browser.new_context(viewport=VIEWPORT, accept_downloads=True))
                visitor.page = await context.new_page()

            async def visit(v: Visitor) -> None:
                try:
                    await SCRIPTS[v.kind](v, url, server, go)
                except BaseException:
                    start_at.append(time.monotonic())  # a visitor failed: the others need not wait for it
                    all_open.set()
                    await _keep_failure(v)
                    raise

            tasks = [asyncio.create_task(visit(v)) for v in visitors]
            await asyncio.wait_for(all_open.wait(), OPEN_SECONDS)
            open_seconds = time.monotonic() - started
            results = await asyncio.gather(*tasks, return_exceptions=True)
            exceptions = [await v.page.locator("[data-testid='stException']").count() for v in visitors]
        finally:
            done.set()
            await memory
            await browser.close()
    wall = time.monotonic() - started
    failures = [(v.kind, v.index, r) for v, r in zip(visitors, results) if isinstance(r, BaseException)]
    assert not failures, failures
    assert not any(exceptions), [(v.kind, v.index) for v, n in zip(visitors, exceptions) if n]

    # ------------------------------------------------------------------------------------------ the figures
    responses = [seconds for v in visitors for _, seconds in v.responses]
    p50, p95 = _quantile(responses, 0.5), _quantile(responses, 0.95)
    by_kind = {kind: [v for v in visitors if v.kind == kind] for kind in KINDS}
    shown = {}  # each page's queue places in the order shown, repeats left out
    for v in visitors:
        for _, places in v.places:
            if v.places and shown.get((v.kind, v.index), [None])[-1] != places:
                shown.setdefault((v.kind, v.index), []).append(places)
    print(f"\n20 Chromium pages (one browser, 20 contexts): {', '.join(f'{n} {k}' for k, n in KINDS.items())}; "
          f"{MAX_RUNS} runs at once; all open after {open_seconds:.1f} s, all finished {wall:.1f} s after the start; "
          f"machine load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"on {os.cpu_count()} cores")
    print(f"page response (action → the page's reaction), {len(responses)} responses: p50 {p50:.2f} s, "
          f"p95 {p95:.2f} s, max {max(responses):.2f} s; by action: " + "; ".join(
              f"{action} {statistics.median(s):.2f}/{max(s):.2f} s (median/max)" for action in
              ("open", "click", "upload", "save")
              for s in [[t for v in visitors for a, t in v.responses if a == action]] if s))
    print("time to the result after the action: " + "; ".join(
        f"{kind} {min(v.finished_after for v in vs):.0f}–{max(v.finished_after for v in vs):.0f} s"
        for kind, vs in by_kind.items()))
    print("queue places shown, in turn (in the order of action; a/b: a page's two runs): " + (", ".join(
        f"{kind} {i}: {' → '.join('/'.join(map(str, p)) for p in seq)}" for (kind, i), seq in shown.items())
        or "none"))
    print(f"server RSS: {rss_warm:.0f} MB after a first page load ({first_load:.1f} s), peak {max(rss):.0f} MB, "
          f"end {rss[-1]:.0f} MB ({len(rss)} samples)")

    # ------------------------------------------------------------------------------------------ every result
    demos = {(v.result["Held-out fooling ratio"], v.result["Random noise, same eps"], v.result["Steps"])
             for v in by_kind["demo"]}
    assert len(demos) == 1, f"every demo page shows the one shared run's result: {demos}"
    fooling, noise, steps = next(iter(demos))  # the demo stops at its 45 s limit: under this load after a few
    # steps, so its fooling ratio is not held to beat noise here (tests/test_demo.py holds the demo's claim)
    assert 0 <= _percent(fooling) <= 1 and 0 <= _percent(noise) <= 1 and int(steps) >= 1, (fooling, noise, steps)
    print(f"the demo (one run shared by the five pages): held-out fooling ratio {fooling} after {steps} steps, "
          f"random noise {noise}")
    shared = max((int(m.group(1)) for v in by_kind["demo"] for t in v.texts
                  for m in [re.search(r"shared: (\d+) pages watch it", t)] if m), default=0)
    assert shared >= 2, "the demo pages watched one shared run"
    for v in by_kind["race"]:
        lines = v.result["status"]
        assert len(lines) == 2 and all("finished" in line for line in lines), lines
        for method in ("SGA", "SGD-UAP"):
            assert any(f"{method} · cifar_resnet20" in line for line in lines), lines
        assert all(re.search(r"held-out fooling ratio \d+%", line) for line in lines), lines
    for v in by_kind["photo"]:
        assert v.result["verdict"].startswith(("Label flipped:", "Not fooled:")), v.result
        for kind in ("clean", "perturbed"):
            assert len(v.result[kind]) == 5 and all(re.fullmatch(r"\d+\.\d%", c) for c in v.result[kind]), v.result
    for v in by_kind["study"]:
        assert v.result["figures"] >= 1 and v.result["tables"] >= 1, v.result
        rows = v.result["json"]["tables"]["by_size"]
        assert {(r["method"], r["fit_images"]) for r in rows} == {(m, n) for m in ("sga", "sgd_uap") for n in (10, 20)}
    for v in by_kind["transfer"]:
        header, *rows = v.result["csv"]
        assert header == ["uap", "efficientnet_lite0", "efficientnet_lite1"], header
        assert [r[0] for r in rows] == ["owner: owner-uap"] and all(0 <= float(x) <= 1 for x in rows[0][1:]), rows
        assert v.result["tables"] >= 1

    # ------------------------------------------------------------------------------------------ the queue
    seen = sorted({p for v in visitors for _, places in v.places for p in places})
    assert seen and seen[0] == 1, "runs waited for a slot and the queue was shown from 1st"
    assert seen == list(range(1, len(seen) + 1)), f"queue places without a gap: {seen}"
    for v in visitors:
        for (_, before), (_, after) in zip(v.places, v.places[1:]):
            assert sorted(after) <= sorted(before) or len(after) < len(before), (v.kind, v.index, v.places)
            assert max(after) <= max(before), (v.kind, v.index, v.places)
        for _, places in v.places:
            assert len(set(places)) == len(places), ("two runs of one page share a place", v.places)

    # ------------------------------------------------------------------------------------------ bounds
    assert p95 <= RESPONSE_P95_SECONDS, (p50, p95)
    assert max(rss) - rss_warm <= RSS_GROWTH_MB and max(rss) <= RSS_LIMIT_MB, (rss_warm, max(rss))

    # ------------------------------------------------------------------------------------------ the files
    from uap_ui.spaces import visitor_folder_name

    assert sorted(p.name for p in server["library"].iterdir()) == owner_files, "the owner's library is unchanged"
    # a visitor's space exists once a page lists their library; only the racers saved anything
    expected = {visitor_folder_name(v.token): [] for v in visitors}
    expected.update({visitor_folder_name(v.token): [f"{v.result['saved']}.{ext}" for ext in ("json", "png",
                                                                                            "safetensors")]
                     for v in by_kind["race"]})
    # (a space's .runs folder holds its kept runs — uap_ui/runstore.py, shown again after a restart — not entries)
    from uap_ui.saved_runs import RUNS_FOLDER

    folders = {p.name: sorted(f.name for f in p.iterdir() if f.name != RUNS_FOLDER)
               for p in server["visitors"].iterdir()}
    assert set(folders) <= set(expected), "no space but the visitors' own"
    for v in by_kind["race"]:
        folder = visitor_folder_name(v.token)
        assert folders.get(folder) == expected[folder], (v.index, folders.get(folder))
        meta = json.loads((server["visitors"] / folder / f"{v.result['saved']}.json").read_text())
        assert meta["algorithm"] in ("sga", "sgd_uap") and meta["model"] == "cifar_resnet20", meta
    for folder, files in folders.items():
        assert files == expected[folder], (folder, files, "another visitor's entry")


# ---------------------------------------------------------------------------------------------- isolation, for real
def test_a_visitor_cannot_delete_the_owners_entry_in_a_real_browser(class_server):
    """On the running class server (classroom mode forced, so this browser is a visitor): the owner's entry is
    listed read-only as "owner: owner-uap"; Delete with a wrong password is refused and the files stay."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import expect, sync_playwright

    def entries() -> list[str]:
        return sorted(p.name for p in class_server["library"].iterdir() if p.is_file())

    files = entries()
    assert files == ["owner-uap.json", "owner-uap.png", "owner-uap.safetensors"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = patient(browser.new_page(viewport={"width": 1400, "height": 2400}))
            page.goto(f"{class_server['url']}/Library")
            expect(page.locator("code", has_text="owner: owner-uap").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("your own space", exact=False).first).to_be_visible()
            expect(page.get_by_text("Saved perturbations in your own space on this server").first).to_be_visible()
            # where the visitor's space (or the owner's library) lies on the server is not shown
            assert str(class_server["library"]) not in page.locator("[data-testid='stMain']").inner_text()
            page.get_by_text("Yes, delete owner: owner-uap").click()
            page.get_by_label("Owner's password").nth(1).fill("guess")
            page.get_by_role("button", name="Delete").click()
            expect(page.get_by_text("wrong owner password: nothing was changed")).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert entries() == files


# ---------------------------------------------------------------------------------------------- isolation rules
@pytest.fixture
def visitor(tmp_path, monkeypatch):
    """AppTest sessions as visitors of a class server (UAP_CLASSROOM=1): an owner's library with one entry, an
    allowed folder holding two images, a folder outside it, a visitors' folder."""
    from PIL import Image

    library = tmp_path / "owner-library"
    save_test_uap(library, "owner-uap")
    allowed, outside = tmp_path / "shared-images", tmp_path / "private"
    for folder in (allowed, outside):
        folder.mkdir()
        for i in range(2):
            Image.new("RGB", (40, 40), (40 * i, 90, 200)).save(folder / f"photo{i}.png")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    for name, value in {"UAP_LIBRARY_DIR": library, "UAP_SHIPPED_DIR": tmp_path / "no-zoo", "UAP_CLASSROOM": "1",
                        "UAP_ALLOWED_FOLDERS": allowed, "UAP_VISITOR_DIR": tmp_path / "visitors",
                        "UAP_OWNER_PASSWORD": OWNER_PASSWORD}.items():
        monkeypatch.setenv(name, str(value))
    return {"library": library, "allowed": allowed, "outside": outside, "visitors": tmp_path / "visitors"}


def _app(name: str):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(PAGES[name]), default_timeout=120)


def _button(at, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}: {[b.label for b in at.button]}"
    return found[0]


def test_a_visitor_cannot_rename_or_delete_owner_entries_without_the_password(visitor):
    from uap_core.artifacts import uap_to_bytes
    import torch

    at = _app("library").run()
    assert not at.exception
    assert at.selectbox(key="lib_entry").value == "owner: owner-uap"
    def owner_files() -> list[str]:
        return sorted(p.name for p in visitor["library"].iterdir() if p.is_file())

    before = owner_files()

    at.checkbox(key="lib_delete_sure").check()
    at.text_input(key="lib_delete_password").set_value("owner")
    _button(at, "Delete").click().run()
    assert any("wrong owner password" in e.value for e in at.error)
    at.text_input(key="lib_new_name").set_value("mine now")
    _button(at, "Rename").click().run()
    assert any("wrong owner password" in e.value for e in at.error)
    assert owner_files() == before, "nothing changed"

    # what a visitor imports goes to their own space, never into the owner's library
    data = uap_to_bytes(torch.full((3, 32, 32), 4 / 255), {"model": "cifar_resnet20"})
    at.file_uploader(key="lib_upload").set_value(("mine.safetensors", data, "application/octet-stream"))
    _button(at, "Import").click().run()
    assert not at.exception and not at.error
    assert owner_files() == before
    spaces = [p for p in visitor["visitors"].iterdir() if p.is_dir()]
    assert len(spaces) == 1 and (spaces[0] / "mine.safetensors").is_file()
    assert "mine" in at.selectbox(key="lib_entry").options

    # the owner, with the password, may delete it
    at.selectbox(key="lib_entry").set_value("owner: owner-uap").run()
    at.checkbox(key="lib_delete_sure").check()
    at.text_input(key="lib_delete_password").set_value(OWNER_PASSWORD)
    _button(at, "Delete").click().run()
    assert not at.exception and not at.error
    assert not (visitor["library"] / "owner-uap.safetensors").exists()


def test_a_visitor_reads_only_the_allowed_folders(visitor, monkeypatch):
    at = _app("generate").run()
    assert not at.exception
    assert "A folder on this machine" in at.radio(key="gen_images_kind").options
    at.radio(key="gen_images_kind").set_value("folder").run()
    for path in (visitor["outside"], visitor["allowed"] / ".." / "private", visitor["allowed"] / "escape",
                 visitor["library"], "/etc"):
        at.text_input(key="gen_folder").set_value(str(path)).run()
        at.button(key="gen_start").click().run()
        assert not at.exception
        assert any("outside the folders this server shares" in e.value for e in at.error), (path, at.error)
        assert not [m for m in at.markdown if "-badge[" in m.value], "no run started"
    # the allowed folder itself is read: a tiny run on its two photos starts and finishes
    at.text_input(key="gen_folder").set_value(str(visitor["allowed"]))
    at.number_input(key="gen_input_size").set_value(32)
    at.number_input(key="gen_epochs_sga").set_value(1)
    at.run()
    at.button(key="gen_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    deadline = time.monotonic() + 120
    while not any("finished]" in m.value for m in at.markdown):
        assert time.monotonic() < deadline, [m.value for m in at.markdown if "-badge[" in m.value]
        time.sleep(0.5)
        at.run()

    at.radio(key="gen_images_kind").set_value("npz").run()
    at.text_input(key="gen_npz_path").set_value(str(visitor["outside"] / "data.npz")).run()
    at.button(key="gen_start").click().run()
    assert any("outside the folders this server shares" in e.value for e in at.error)

    monkeypatch.delenv("UAP_ALLOWED_FOLDERS")  # none shared (the default): no folder option, no .npz path field
    at = _app("generate").run()
    assert "A folder on this machine" not in at.radio(key="gen_images_kind").options
    at.radio(key="gen_images_kind").set_value("npz").run()
    assert not [t for t in at.text_input if t.key == "gen_npz_path"]


def test_a_visitors_upload_is_held_to_the_limit(visitor, monkeypatch):
    monkeypatch.setenv("UAP_MAX_UPLOAD_MB", "1")
    at = _app("generate").run()
    at.radio(key="gen_images_kind").set_value("upload").run()
    big = bytes(700 * 1024)
    at.file_uploader(key="gen_uploads").set_value([("a.png", big, "image/png"), ("b.png", big, "image/png")]).run()
    assert any("the upload is 1.4 MB; this server takes at most 1 MB at once from a visitor" in e.value
               for e in at.error), [e.value for e in at.error]
    at.button(key="gen_start").click().run()
    assert not at.exception and not [m for m in at.markdown if "-badge[" in m.value]


def test_the_rules_themselves(tmp_path):
    from uap_ui import spaces

    assert spaces.classroom_from(None, None) and spaces.classroom_from(None, "0.0.0.0")
    assert spaces.classroom_from("", "192.168.1.20")
    assert not spaces.classroom_from(None, "127.0.0.1") and not spaces.classroom_from(None, "localhost")
    assert not spaces.classroom_from(None, "::1")
    assert spaces.classroom_from("1", "127.0.0.1") and not spaces.classroom_from("false", "0.0.0.0")
    assert spaces.classroom_from("maybe", "127.0.0.1"), "a setting not understood errs on the safe side"
    assert spaces.password_matches("s3cret", "s3cret") and not spaces.password_matches("s3cre", "s3cret")
    assert not spaces.password_matches("", "") and not spaces.password_matches("x", None)
    inside = tmp_path / "shared" / "class 1"
    inside.mkdir(parents=True)
    (tmp_path / "shared" / "out").symlink_to(tmp_path)
    assert spaces.path_allowed(inside, [tmp_path / "shared"])
    assert not spaces.path_allowed(tmp_path / "shared" / ".." / "x", [tmp_path / "shared"])
    assert not spaces.path_allowed(tmp_path / "shared" / "out", [tmp_path / "shared"])
    assert not spaces.path_allowed(tmp_path / "shared-not", [tmp_path / "shared"])
    assert spaces.parse_folders(f"/a{os.pathsep}/b") == [Path("/a"), Path("/b")]
    assert spaces.visitor_folder_name("token-1") != spaces.visitor_folder_name("token-2")
    assert "token" not in spaces.visitor_folder_name("token-1")


def test_a_run_waiting_for_a_slot_shows_its_place_in_the_queue(visitor, monkeypatch):
    """One slot on this server, taken by another job: the Generate page shows its run queued with its place and
    expected wait; it starts when the slot frees and finishes."""
    import threading

    from uap_ui import jobs, scheduler

    monkeypatch.setattr(scheduler, "_SCHEDULER", scheduler.Scheduler(max_runs=1))
    release = threading.Event()
    blocker = jobs.Task(lambda report, stopped: release.wait(60), "another visitor's table",
                        expected_seconds=300).start()
    try:
        at = _app("generate").run()
        at.number_input(key="gen_input_size").set_value(32)
        at.number_input(key="gen_epochs_sga").set_value(1)
        at.run()
        at.button(key="gen_start").click().run()
        assert not at.exception and not at.error
        lines = [m.value for m in at.markdown if "-badge[" in m.value]
        assert len(lines) == 1 and "queued]" in lines[0], lines
        captions = [c.value for c in at.caption if "in queue:" in c.value]
        assert captions and "in queue: 1st, about 5 min" in captions[0], [c.value for c in at.caption]
        assert "runs 1 at once" in captions[0]
    finally:
        release.set()
    assert blocker.join(timeout=10)
    deadline = time.monotonic() + 120
    while not any("finished]" in m.value for m in at.markdown):
        assert time.monotonic() < deadline, [m.value for m in at.markdown if "-badge[" in m.value]
        time.sleep(0.5)
        at.run()
    assert not at.exception


def test_check_path_for_pages_that_take_typed_paths(visitor):
    """What the Studies page and others call on a typed path: refused outside the allowed folders for a visitor,
    except the owner-configured default value."""
    from uap_core.errors import ImageSourceError
    from uap_ui import spaces

    spaces.check_path(str(visitor["allowed"] / "photo0.png"))
    spaces.check_path("samples")
    spaces.check_path("/srv/data/cifar.npz", default="/srv/data/cifar.npz")
    with pytest.raises(ImageSourceError, match="outside the folders this server shares"):
        spaces.check_path(str(visitor["outside"]), default="/srv/data/cifar.npz")


def test_a_visitor_runs_studies_only_on_shared_data_and_writes_no_file(visitor, tmp_path, monkeypatch):
    """The Studies page as a visitor: an image source, a UAP path or a file: model outside the allowed folders is
    refused with the reason, and so is writing fine-tuned weights; nothing is started or written."""
    from streamlit.testing.v1 import AppTest

    from uap_ui import nav

    monkeypatch.setattr(nav, "menu", lambda: None)  # the page is AppTest's entrypoint here (see test_studies_page)
    at = AppTest.from_file(str(ROOT / "pages" / "5_Studies.py"), default_timeout=120).run()
    assert not at.exception

    def submit_and_expect(message: str) -> None:
        [b for b in at.button if b.label == "Run the study"][0].click().run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
        assert not [m for m in at.markdown if "-badge[" in m.value], "no study started"

    at.selectbox(key="study_pick").set_value("finetune").run()
    at.text_input(key="study_finetune_images").set_value(str(visitor["outside"]))
    submit_and_expect("outside the folders this server shares")
    at.text_input(key="study_finetune_images").set_value(str(visitor["allowed"]))
    target = tmp_path / "finetuned.pt"
    at.text_input(key="study_finetune_save_weights").set_value(str(target))
    submit_and_expect("only the server's owner may write files")
    assert not target.exists()

    at.selectbox(key="study_pick").set_value("dominant_labels").run()
    at.text_input(key="study_dominant_labels_uap").set_value(str(visitor["outside"] / "someone.safetensors"))
    submit_and_expect("outside the folders this server shares")
    at.text_input(key="study_dominant_labels_uap").set_value("")
    at.text_input(key="study_dominant_labels_model").set_value(f"file:{visitor['outside']}/net.pt?size=32")
    submit_and_expect("outside the folders this server shares")
