"""Every page under Streamlit's AppTest: default widgets, a tiny run to completion, charts, histogram, library.

``run_every`` never fires under AppTest, so a running job is followed by calling ``at.run()`` in a loop with a
deadline (:func:`ui_helpers.wait_for_runs`). Tiny runs use a 64-px input and one epoch on the embedded samples.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from ui_helpers import PAGES, figure_titled, plotly_specs, save_test_uap, status_lines, wait_for_runs

TIMEOUT = 120  # seconds for one script run (the first one loads the model)


@pytest.fixture
def library_dir(tmp_path, monkeypatch):
    """An empty user library and no shipped zoo (the shipped entries have their own tests, tests/test_zoo.py)."""
    folder = tmp_path / "library"
    monkeypatch.setenv("UAP_LIBRARY_DIR", str(folder))
    monkeypatch.setenv("UAP_SHIPPED_DIR", str(tmp_path / "no-shipped-zoo"))
    return folder


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES[name]), default_timeout=TIMEOUT)


def values(widgets) -> dict:
    return {w.key: w.value for w in widgets}


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}: {[b.label for b in at.button]}"
    return found[0]


def named_traces(spec: dict) -> list[dict]:
    """The run traces of a metric chart (random-noise baselines are hidden from the legend)."""
    return [t for t in spec["data"] if t.get("showlegend", True)]


# ---------------------------------------------------------------------------------------------- Home
def test_home_defaults_demo_starts_and_stop_keeps_delta(library_dir, monkeypatch):
    """Also: opening Home warms the demo (its clean passes and random-noise baseline, in a background thread), and
    the demo's run then takes those three values from the memo instead of computing them."""
    from uap_core import memo
    from uap_ui import runview

    monkeypatch.setenv(runview.WARM_SWITCH, "1")
    runview._warmed.clear()
    memo.clear()
    at = page("home").run()
    assert not at.exception
    warming = [t for t in threading.enumerate() if t.name == "uap-warm"]
    assert len(warming) == 1, "Home started warming its demo"
    warming[0].join(120)
    assert memo.misses == 3 and memo.hits == 0, "fit logits, held-out clean top-1, random-noise evaluation"
    at.run()
    assert not [t for t in threading.enumerate() if t.name == "uap-warm"], "warmed once per process, not per run"
    start = at.button(key="demo_start")
    assert start.label == "Run the demo" and not start.disabled
    assert at.button(key="demo_stop").disabled
    assert any("Device in use" in m.value for m in at.markdown)
    assert len(at.get("image")) >= 1, "the explainer picture"

    start.click().run()
    assert not at.exception and not at.error
    deadline = time.monotonic() + 90
    while not any("step 1/" in line or "step 2/" in line for line in status_lines(at)):
        assert time.monotonic() < deadline, status_lines(at)
        time.sleep(0.5)
        at.run()
    assert memo.misses == 3 and memo.hits >= 3, "the demo's preparation came from the warm memo"
    assert not at.button(key="demo_stop").disabled
    at.button(key="demo_stop").click().run()
    lines = wait_for_runs(at, timeout=60)
    assert "stopped]" in lines[0] or "finished]" in lines[0]
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert "Held-out fooling ratio" in metrics and metrics["Held-out fooling ratio"].endswith("%")
    held_out = figure_titled(at, "Held-out fooling ratio")
    assert len(named_traces(held_out)[0]["x"]) >= 1
    histogram = figure_titled(at, "Top label of the perturbed")
    assert histogram["data"][0]["type"] == "bar" and sum(histogram["data"][0]["x"]) > 0
    assert len(at.get("image")) >= 3, "δ and the clean / perturbed pictures"


# ---------------------------------------------------------------------------------------------- Generate
def test_generate_defaults(library_dir):
    at = page("generate").run()
    assert not at.exception
    selects = values(at.selectbox)
    assert selects["gen_model"] == "efficientnet_lite0"
    assert selects["gen_algorithm"] == "sga"
    assert selects["gen_device"] == "auto"
    assert selects["gen_target_efficientnet_lite0"] is None
    assert selects["gen_sga_loss"] == "ce"
    numbers = values(at.number_input)
    assert numbers["gen_eps_linf"] == 10.0
    assert numbers["gen_seed"] == 0
    assert numbers["gen_sga_batch_size"] == 250 and numbers["gen_sga_minibatch_size"] == 10
    assert numbers["gen_sga_inner_passes"] == 4 and numbers["gen_sga_beta"] == 9.0
    assert numbers["gen_sga_step_size_10"] == 1.0, "step size default 0.1·eps shown as n/255"
    assert numbers["gen_epochs_sga"] == 20
    assert numbers["gen_augment"] == 0 and numbers["gen_holdout_views"] == 0
    assert selects["gen_keep"] == "best" and selects["gen_compile"] == "auto"
    assert selects["gen_robust"] == "off" and numbers["gen_robust_jpeg_quality"] == 50  # robust δ: off by default
    assert numbers["gen_robust_rotation"] == 10.0
    radios = values(at.radio)
    assert radios["gen_images_kind"] == "samples" and radios["gen_norm"] == "linf"
    assert not at.button(key="gen_start").disabled and at.button(key="gen_stop").disabled
    assert at.info, "the empty live panel explains what to do"


def test_generate_unavailable_model_shows_error(library_dir):
    at = page("generate").run()
    at.selectbox(key="gen_model").set_value("alexnet").run()
    assert not at.exception
    assert any("not available offline" in e.value for e in at.error)
    assert at.button(key="gen_start").disabled


def test_generate_bad_folder_shows_error(library_dir, tmp_path):
    at = page("generate").run()
    at.radio(key="gen_images_kind").set_value("folder").run()
    at.text_input(key="gen_folder").set_value(str(tmp_path / "nowhere")).run()
    at.button(key="gen_start").click().run()
    assert not at.exception
    assert any("no such file or folder" in e.value for e in at.error)
    assert not status_lines(at)


def test_generate_upload_that_is_not_an_image_shows_error(library_dir):
    at = page("generate").run()
    at.radio(key="gen_images_kind").set_value("upload").run()
    at.file_uploader(key="gen_uploads").set_value([("notes.txt", b"not an image", "text/plain"),
                                                   ("fake.jpg", b"\xff\xd8 broken", "image/jpeg")]).run()
    at.button(key="gen_start").click().run()
    assert not at.exception
    assert any("no decodable images" in e.value for e in at.error)
    assert not status_lines(at)


def _tiny_settings(at: AppTest) -> None:
    at.number_input(key="gen_input_size").set_value(64)
    at.number_input(key="gen_epochs_sga").set_value(1)
    at.number_input(key="gen_sga_batch_size").set_value(5)
    at.number_input(key="gen_sga_minibatch_size").set_value(5)
    at.number_input(key="gen_sga_inner_passes").set_value(1)
    at.run()


def test_generate_tiny_run_race_charts_and_save(library_dir):
    at = page("generate").run()
    _tiny_settings(at)
    at.button(key="gen_start").click().run()
    assert not at.exception and not at.error
    lines = wait_for_runs(at)
    assert "finished]" in lines[0] and "SGA" in lines[0]
    assert not at.exception

    held_out = figure_titled(at, "Held-out fooling ratio")
    trace = named_traces(held_out)[0]
    assert trace["type"] == "scatter" and len(trace["x"]) >= 1
    assert all(0.0 <= y <= 1.0 for y in trace["y"] if y is not None)
    for title in ("Batch fooling ratio", "Gradient-cosine", "Quantisation error", "Loss", "Sign operations"):
        assert len(named_traces(figure_titled(at, title))[0]["x"]) == 3, title  # 13 fit images / B = 5
    histogram = figure_titled(at, "Held-out labels under")
    assert histogram["data"][0]["type"] == "bar" and sum(histogram["data"][0]["x"]) == 12
    assert "of 12 images" in histogram["layout"]["title"]["text"], "share of the top label over the 12 held out"
    assert len(at.get("image")) >= 1, "the current δ"

    # race SGA against SGD-UAP with the form's settings (the preset off): two more runs on the same axes, drawn
    # against image-gradients spent
    assert at.multiselect(key="gen_race_methods").value == ["sga", "sgd_uap"]
    at.toggle(key="gen_race_preset").set_value(False).run()
    assert at.selectbox(key="gen_race_protocol").value == "epochs"  # the paper's protocol by default
    at.selectbox(key="gen_race_protocol").set_value("image_gradients").run()
    assert any("equal image-gradients" in c.value for c in at.caption)
    at.button(key="gen_race").click().run()
    assert not at.exception and not at.error
    lines = wait_for_runs(at)
    assert len(lines) == 3 and all("finished]" in line for line in lines)
    held_out = figure_titled(at, "Held-out fooling ratio")
    legend = [t["name"] for t in named_traces(held_out)]
    assert len(legend) == 3 and any("SGD-UAP" in n for n in legend) and sum("SGA" in n for n in legend) == 2
    assert at.radio(key="gen_x_axis").value == "image_gradients"
    assert held_out["layout"]["xaxis"]["title"]["text"].startswith("image-gradients")
    sgd = next(t for t in named_traces(held_out) if "SGD-UAP" in t["name"])
    assert sgd["x"][-1] == 13  # 3 steps (5 + 5 + 3 images): the x axis counts image-gradients, not steps

    # save the newest result to the library
    button(at, "Save to the library").click().run()
    assert not at.exception
    assert any("Saved as" in s.value for s in at.success)
    from uap_core.library import UAPLibrary

    entries = UAPLibrary(library_dir).list()
    assert len(entries) == 1 and entries[0].metadata["algorithm"] in ("sga", "sgd_uap")
    assert entries[0].shape == (3, 64, 64)

    at.button(key="gen_clear").click().run()
    assert not status_lines(at)


def test_two_runs_of_one_method_model_and_seed_are_told_apart(library_dir, monkeypatch):
    """The same tiny SGA started twice (same method, model and seed): each run has its own status line, legend
    entry, δ choice and result, "· run 1" and "· run 2" in the order they were started."""
    from uap_ui import jobs

    # not the finished identical run of an earlier test in this process (it may carry another label)
    monkeypatch.setattr(jobs, "SHARED_KEEP_SECONDS", 0.0)
    at = page("generate").run()
    _tiny_settings(at)
    at.button(key="gen_start").click().run()
    wait_for_runs(at)
    at.button(key="gen_start").click().run()
    lines = wait_for_runs(at)
    assert not at.exception and not at.error
    label = "SGA · efficientnet_lite0 · seed 0"
    assert len(lines) == 2
    assert f"{label} · run 2" in lines[0] and f"{label} · run 1" in lines[1]  # newest first
    legend = [t["name"] for t in named_traces(figure_titled(at, "Held-out fooling ratio"))]
    assert sorted(legend) == [f"{label} · run 1", f"{label} · run 2"]
    assert sorted(at.selectbox(key="gen_detail_run").options) == [f"{label} · run 1", f"{label} · run 2"]
    titles = [e.label for e in at.expander if e.label.startswith(label)]
    assert sorted(titles) == [f"{label} · run 1 — done", f"{label} · run 2 — done"]


def test_generate_race_with_seeds_draws_bands_on_the_epoch_axis(library_dir):
    """The race in the paper's protocol (the default: equal epochs) with two seeds: SGA and SGD-UAP run once per
    seed; each method is one mean line with its min–max band against epochs, and the results give mean ± s.d."""
    at = page("generate").run()
    _tiny_settings(at)
    at.text_input(key="gen_seeds").set_value("0,1").run()
    at.toggle(key="gen_race_preset").set_value(False).run()
    at.button(key="gen_race").click().run()
    assert not at.exception and not at.error
    lines = wait_for_runs(at)
    assert len(lines) == 4 and all("finished]" in line for line in lines)
    assert at.radio(key="gen_x_axis").value == "epoch"
    assert any("equal epochs" in c.value for c in at.caption)
    for title in ("Held-out fooling ratio", "Stability: update vs the mean", "Budget used"):
        figure = figure_titled(at, title)
        assert figure["layout"]["xaxis"]["title"]["text"].startswith("epochs")
        means = [t for t in figure["data"] if "mean of 2 seeds" in (t.get("name") or "")]
        assert sorted(t["name"].split(" ·")[0] for t in means) == ["SGA", "SGD-UAP"], title
        assert sum(t.get("fill") == "tonexty" for t in figure["data"]) == 2, title
        assert all(t["x"][-1] == pytest.approx(1.0) for t in means), title  # both end after their one epoch
    at.run()  # the results below the live view: drawn by the script run after the last run ended
    assert not at.exception
    spreads = [m.value for m in at.markdown if "over 2 seeds" in m.value]
    assert len(spreads) == 2 and all("±" in line for line in spreads), spreads


def test_every_method_runs_from_generate(library_dir):
    """Each of the eleven methods from the Generate form (grouped picker, its one-line summary, its own hyperparameter
    form), on the embedded photos at 64 px with a budget of 40 image-gradients: every run finishes and draws its
    held-out fooling ratio."""
    from uap_core.algorithms import ALGORITHMS

    at = page("generate").run()
    at.number_input(key="gen_input_size").set_value(64)
    at.number_input(key="gen_budget").set_value(40)
    at.run()
    options = at.selectbox(key="gen_algorithm").options
    assert len(options) == len(ALGORITHMS) == 11
    assert options[0].startswith("Data-driven") and options[-1].startswith("Generative")
    for name in ALGORITHMS:
        at.selectbox(key="gen_algorithm").set_value(name).run()
        assert not at.exception, name
        assert any(ALGORITHMS[name].summary in c.value for c in at.caption), name
        at.button(key="gen_start").click().run()
        assert not at.exception and not at.error, (name, [e.value for e in at.error])
        lines = wait_for_runs(at, timeout=240)
        assert len(lines) == 1 and "finished]" in lines[0], (name, lines)
        trace = named_traces(figure_titled(at, "Held-out fooling ratio"))[0]
        assert trace["y"] and all(0.0 <= y <= 1.0 for y in trace["y"] if y is not None), name
        at.button(key="gen_clear").click().run()


def test_generate_ensemble_of_two_cifar_models(library_dir, cifar_npz):
    """The ensemble multi-select offers only models with the chosen model's labels and input size; a run against
    ResNet-20 + ResNet-56 finishes and is labelled with both."""
    at = page("generate").run()
    at.selectbox(key="gen_model").set_value("cifar_resnet20").run()
    at.radio(key="gen_images_kind").set_value("npz").run()
    at.text_input(key="gen_npz_path").set_value(str(cifar_npz)).run()
    ensemble = at.multiselect(key="gen_ensemble_cifar_resnet20")
    assert ensemble.options == ["cifar_resnet56"]  # not the ImageNet models
    ensemble.set_value(["cifar_resnet56"]).run()
    at.number_input(key="gen_fit").set_value(1800)  # 200 held out
    at.number_input(key="gen_budget").set_value(200)
    at.number_input(key="gen_eval_every").set_value(1000)
    at.selectbox(key="gen_keep").set_value("last")  # no fit-set evaluations
    at.run()
    at.button(key="gen_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    lines = wait_for_runs(at, timeout=240)
    assert "finished]" in lines[0] and "cifar_resnet20,cifar_resnet56" in lines[0], lines


def test_generate_run_settings_reach_the_run(library_dir):
    """Held-out crops and keep = last from the form: the run measures on 2 views of each of the 12 held-out
    photos and keeps its last δ."""
    at = page("generate").run()
    _tiny_settings(at)
    at.number_input(key="gen_holdout_views").set_value(2)
    at.selectbox(key="gen_keep").set_value("last")
    at.run()
    at.button(key="gen_start").click().run()
    lines = wait_for_runs(at)
    assert not at.exception and "finished]" in lines[0] and "kept δ: step 3 " in lines[0]
    histogram = figure_titled(at, "Held-out labels under")
    assert sum(histogram["data"][0]["x"]) == 24 and "of 24 images" in histogram["layout"]["title"]["text"]


# ---------------------------------------------------------------------------------------------- Inspect
def test_inspect_saved_uap_grid_histogram_and_strength(library_dir):
    save_test_uap(library_dir, "test-uap")
    at = page("inspect").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="insp_uap").value == "test-uap"
    assert at.slider(key="insp_strength").value == 1.0
    assert [s for s in at.selectbox if s.key.startswith("insp_model_")][0].value == "efficientnet_lite0"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Fooled images"].endswith("/ 25")
    assert len(at.get("image")) == 1 + 2 * 8 + 1, "δ, 8 clean / perturbed pairs, the physical check's image"
    histogram = figure_titled(at, "Top-1 labels under the perturbation")
    assert histogram["data"][0]["type"] == "bar" and sum(histogram["data"][0]["x"]) == 25, "top labels + the rest"
    assert "of 25 images" in histogram["layout"]["title"]["text"]
    assert len(at.get("arrow_data_frame")) == 2 or len(at.dataframe) == 2
    assert len(at.get("download_button")) == 3 + 1, "3 for the set of images, the physical check's print PNG"

    at.slider(key="insp_strength").set_value(0.0).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Fooling ratio"] == "0%"


def test_inspect_rejects_bad_uploads(library_dir):
    at = page("inspect").run()
    assert not at.exception
    assert at.info, "an empty library is explained"
    at.radio(key="insp_source").set_value("upload").run()
    at.file_uploader[0].set_value(("junk.npy", b"this is not an array", "application/octet-stream")).run()
    assert not at.exception
    assert any("cannot be used as a perturbation" in e.value for e in at.error)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 8, 8), dtype=np.float32))
    at.file_uploader[0].set_value(("wrong_shape.npy", buffer.getvalue(), "application/octet-stream")).run()
    assert not at.exception
    assert any("cannot be used as a perturbation" in e.value for e in at.error)


# ---------------------------------------------------------------------------------------------- Transfer
def test_transfer_matrix_heatmap(library_dir):
    save_test_uap(library_dir, "uap-224", size=224, seed=1)
    save_test_uap(library_dir, "uap-64", size=64, seed=2)
    at = page("transfer").run()
    assert not at.exception
    assert sorted(at.multiselect(key="tr_uaps").value) == ["uap-224", "uap-64"]
    assert at.multiselect(key="tr_models").value == ["efficientnet_lite0", "efficientnet_lite1"]
    at.multiselect(key="tr_models").set_value(["efficientnet_lite0", "alexnet"])
    at.number_input(key="tr_limit").set_value(6)
    at.run()
    at.button(key="tr_compute").click().run()
    assert not at.exception and not at.error
    deadline = time.monotonic() + 90
    while not [s for s in plotly_specs(at) if s["data"][0]["type"] == "heatmap"]:
        assert time.monotonic() < deadline, "no heatmap in time"
        time.sleep(0.5)
        at.run()
    heatmap = figure_titled(at, "Fooling ratio on 6 images")["data"][0]
    assert heatmap["x"] == ["efficientnet_lite0", "alexnet"] and len(heatmap["y"]) == 2
    assert all(0.0 <= row[0] <= 1.0 for row in heatmap["z"]) and all(row[1] is None for row in heatmap["z"])
    assert any("alexnet" in w.value for w in at.warning)


# ---------------------------------------------------------------------------------------------- Library
def test_library_list_rename_delete_and_uploads(library_dir):
    at = page("library").run()
    assert not at.exception and at.info, "an empty library is explained"

    save_test_uap(library_dir, "first")
    at = page("library").run()
    assert not at.exception
    assert at.selectbox(key="lib_entry").value == "first"
    assert figure_titled(at, "Held-out fooling ratio"), "the saved metric history"

    at.text_input(key="lib_new_name").set_value("renamed")
    button(at, "Rename").click().run()
    assert not at.exception
    assert any("Renamed first to renamed" in s.value for s in at.success)
    from uap_core.library import UAPLibrary

    assert [e.name for e in UAPLibrary(library_dir).list()] == ["renamed"]

    at.file_uploader(key="lib_upload").set_value(("junk.pt", b"definitely not a tensor", "application/octet-stream"))
    button(at, "Import").click().run()
    assert not at.exception
    assert any("Not imported" in e.value for e in at.error)

    from uap_core.artifacts import uap_to_bytes

    good = uap_to_bytes(torch.full((3, 32, 32), 4 / 255), {"model": "cifar_resnet20"})
    at.file_uploader(key="lib_upload").set_value(("good.safetensors", good, "application/octet-stream"))
    button(at, "Import").click().run()
    assert not at.exception
    assert sorted(e.name for e in UAPLibrary(library_dir).list()) == ["good", "renamed"]

    at.selectbox(key="lib_entry").set_value("renamed").run()
    at.checkbox(key="lib_delete_sure").check()
    button(at, "Delete").click().run()
    assert not at.exception
    assert [e.name for e in UAPLibrary(library_dir).list()] == ["good"]


# ---------------------------------------------------------------------------------------------- jobs
def test_closing_the_last_session_stops_its_jobs_after_the_grace_period():
    from uap_core.run import Run, RunConfig
    from uap_ui import jobs

    run = Run(RunConfig(model="efficientnet_lite0", algorithm="sgd_uap", images="samples", input_size=32,
                        epochs=10_000, device="cpu", params={"batch_size": 2}))
    job = jobs.Job(run).start()
    workspace = jobs.attach("grace-test-token", "session-1")
    workspace.add_run(job)
    jobs.attach("grace-test-token", "session-2")
    jobs.detach("grace-test-token", "session-1", grace=0.05)
    time.sleep(0.3)
    assert job.active, "another session still shows the workspace"
    jobs.detach("grace-test-token", "session-2", grace=0.05)
    assert job.join(timeout=60), "the job ended after the grace period"
    snap = job.snapshot()
    assert snap.state == jobs.STOPPED and snap.result is not None and snap.result.reason == "stopped"
    assert job.run is None, "a finished job lets go of its run (and the images on the device)"


def test_generate_with_your_own_model_file(library_dir, tmp_path):
    """"Your own model…": a bad name is a clear message; a TorchScript classifier file with its mean/std and size
    fits a δ from the page like any registry model."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 10))
    path = tmp_path / "my net.pt"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    at = page("generate").run()
    at.selectbox(key="gen_model").set_value("__custom__").run()
    assert any("Type a model name" in i.value for i in at.info) and not at.exception
    at.text_input(key="gen_model_custom").set_value(f"file:{tmp_path}/missing.pt?size=32&mean=0.5/0.5/0.5"
                                                     "&std=0.25/0.25/0.25").run()
    assert any("cannot be used" in e.value and "missing.pt" in e.value for e in at.error)
    at.text_input(key="gen_model_custom").set_value(f"file:{path}?size=32&mean=0.5/0.5/0.5&std=0.25/0.25/0.25"
                                                     "&labels=cifar10").run()
    assert not at.exception and not at.error
    at.number_input(key="gen_epochs_sga").set_value(1)
    at.number_input(key="gen_sga_batch_size").set_value(5)
    at.number_input(key="gen_sga_minibatch_size").set_value(5)
    at.number_input(key="gen_sga_inner_passes").set_value(1)
    at.run()
    at.button(key="gen_start").click().run()
    lines = wait_for_runs(at)
    assert not at.exception and "finished]" in lines[0], lines
