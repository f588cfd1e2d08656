"""The Studies page under AppTest: a form built from the study's settings, a tiny study run to the end from the
page (figure, summary, downloads), and Stop ending a longer one with the rows finished so far kept.

``run_every`` never fires under AppTest: a running study is followed by calling ``at.run()`` in a loop with a
deadline. Tiny studies: CIFAR-10 ResNet-20 on a few dozen images of the shared .npz.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui_helpers import ROOT

PAGE = ROOT / "pages" / "5_Studies.py"
TIMEOUT = 120
PREFIX = "study_images_needed_"


@pytest.fixture(autouse=True)
def no_menu(monkeypatch):
    """The sidebar menu links pages relative to app.py, the entrypoint of a served app; AppTest.from_file(page)
    makes the page itself the entrypoint, so the links are left out here (the browser test covers the menu)."""
    from uap_ui import nav

    monkeypatch.setattr(nav, "menu", lambda: None)


def page() -> AppTest:
    return AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)


def submit(at: AppTest):
    found = [b for b in at.button if b.label == "Run the study"]
    assert found, [b.label for b in at.button]
    return found[0]


def set_tiny(at: AppTest, images: Path, fit_sizes: str, min_steps: int) -> None:
    at.text_input(key=PREFIX + "images").set_value(str(images))
    at.multiselect(key=PREFIX + "methods").set_value(["sgd_uap"])
    at.text_input(key=PREFIX + "fit_sizes").set_value(fit_sizes)
    at.text_input(key=PREFIX + "seeds").set_value("0")
    at.number_input(key=PREFIX + "holdout").set_value(100)
    at.number_input(key=PREFIX + "epochs").set_value(1)
    at.number_input(key=PREFIX + "min_steps").set_value(min_steps)
    at.text_input(key=PREFIX + "device").set_value("cpu")


def wait_until(at: AppTest, done, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return
        assert time.monotonic() < deadline, [p.proto.text for p in at.get("progress")]
        time.sleep(0.3)


def progress_bars(at: AppTest) -> list:
    return at.get("progress")


def figure_spec(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no figure"
    return json.loads(charts[0].proto.spec)


def test_form_is_built_from_the_settings_and_a_bad_value_is_one_line(cifar_npz):
    at = page().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="study_pick").value == "images_needed"
    assert at.text_input(key=PREFIX + "fit_sizes").value == "10,30,100,300,1000"
    assert at.text_input(key=PREFIX + "eps").value == "8/255"
    assert at.multiselect(key=PREFIX + "methods").value == ["sga", "sgd_uap"]
    assert at.button(key="study_stop").disabled
    at.text_input(key=PREFIX + "fit_sizes").set_value("10,ten")
    submit(at).click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "fit_sizes" in errors[0] and "\n" not in errors[0]
    # another study's form: its own settings
    at.selectbox(key="study_pick").set_value("batch_stability").run()
    assert at.text_input(key="study_batch_stability_batch_sizes").value == "10,50,250"
    at.selectbox(key="study_pick").set_value("robustness").run()  # the registry's newest: its form, from its settings
    assert not at.exception and at.multiselect(key="study_robustness_robust").value == ["jpeg", "rotation", "screen"]
    assert at.text_input(key="study_robustness_jpeg_qualities").value == "95,85,75,65,50,40,30"


def test_tiny_study_runs_to_the_end_with_figure_and_downloads(cifar_npz):
    at = page().run()
    set_tiny(at, cifar_npz, "10,20", 3)
    submit(at).click().run()
    assert not at.exception, at.exception
    wait_until(at, lambda a: not progress_bars(a) and len(a.get("download_button")) >= 4)
    spec = figure_spec(at)
    lines = [t for t in spec["data"] if t.get("name") == "sgd_uap"]
    assert lines and lines[0]["x"] == [10, 20], "one point per fit size"
    assert spec["layout"]["xaxis"]["type"] == "log"
    labels = [b.proto.label for b in at.get("download_button")]
    assert any(".csv" in label for label in labels) and "Everything (.json)" in labels and "Figure (.html)" in labels
    assert not at.warning, "finished, not stopped"
    assert at.button(key="study_stop").disabled


@pytest.mark.slow
def test_stop_ends_a_running_study_and_keeps_the_finished_rows(cifar_npz):
    at = page().run()
    set_tiny(at, cifar_npz, "10,1000", 40)  # the second run is long: 40 steps of 250 images
    submit(at).click().run()
    assert not at.exception, at.exception
    wait_until(at, lambda a: any("1000 images" in p.proto.text for p in progress_bars(a)))
    assert not at.button(key="study_stop").disabled
    at.button(key="study_stop").click().run()
    wait_until(at, lambda a: not progress_bars(a), timeout=60)
    assert any("Stopped" in w.value for w in at.warning)
    spec = figure_spec(at)
    lines = [t for t in spec["data"] if t.get("name") == "sgd_uap"]
    assert lines and lines[0]["x"] == [10], "the finished run is kept, the stopped one is not a row"
    assert len(at.get("download_button")) >= 4
