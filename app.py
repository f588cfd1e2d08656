"""UAP Explorer — Home: what a universal adversarial perturbation is, and a one-button live demo.

Run with ``streamlit run app.py``. The other pages live in ``pages/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.presets import demo_config
from uap_ui import charts, replay, runview, saved_runs, widgets
from uap_ui.jobs import Workspace
from uap_ui.page import setup_page
from uap_ui.session import current_workspace
from uap_ui.widgets import SAMPLES_CHOICE

EXPLAINER = Path(uap_ui.__file__).resolve().parent / "assets" / "explainer.png"  # a checkout's or an install's

workspace = setup_page("Home")
st.title("UAP Explorer")

intro, picture = st.columns([3, 2], vertical_alignment="center")
with intro:
    st.markdown(
        "A **universal adversarial perturbation** (UAP) is *one* faint pattern δ that, added to almost any photo, "
        "makes an image classifier change its answer — the same δ for every image, invisible to a person "
        "(each pixel moves by at most 10/255). It is found by gradient ascent on the model's loss over many "
        "images at once. The **fooling ratio** is the share of images, never seen while fitting δ, whose top "
        "label changes; random noise of the same strength barely fools anyone. Fooled images tend to collapse "
        "onto a few **dominant labels**: the perturbation's own features win.")
    st.markdown(f"**Device in use:** {widgets.device_description()}")
with picture:
    if EXPLAINER.is_file():
        st.image(str(EXPLAINER), caption="clean image + δ (shown amplified) = perturbed image, and the model's "
                                         "top label before and after", output_format="PNG", width="stretch")
    else:
        st.caption("(picture missing: uap_ui/assets/explainer.png)")

config = demo_config("auto")
st.subheader("Live demo")
st.markdown(f"**{config.model}** (a real ImageNet model, weights offline) · **SGA** · eps **10/255** L∞ · the "
            f"embedded sample photos: half of them to fit δ (on {config.augment} random crops of each), the other "
            f"half held out to measure it (on {config.holdout_views} random crops of each). About a minute on a "
            f"laptop CPU.")


def stop_demo(ws: Workspace) -> None:
    runview.stop_job(ws, ws.demo)  # a demo other pages also watch goes on for them


demo_running = workspace.demo is not None and workspace.demo.active
left, right, _ = st.columns([1, 1, 3])
clicked = left.button("Run the demo", type="primary", key="demo_start", icon=":material/play_arrow:",
                      disabled=demo_running, width="stretch")
right.button("Stop", key="demo_stop", icon=":material/stop:", on_click=stop_demo, args=(workspace,),
             disabled=not demo_running, width="stretch")
if clicked:
    job = runview.start_run(config, SAMPLES_CHOICE, kind="demo")
    if job is not None:
        workspace.set_demo(job)
        st.rerun()  # redraw the buttons (Stop enabled) and start polling
runview.show_notices()


@st.fragment(run_every=runview.poll_seconds() if demo_running else None)
def demo_view() -> None:
    """Live while the demo runs (polled every second); one full rerun when it ends."""
    ws = current_workspace()
    job = ws.demo
    if job is None:
        st.info("Press **Run the demo**: the held-out fooling ratio appears here within seconds.",
                icon=":material/play_circle:")
        return
    snap = job.snapshot()
    if demo_running and not snap.active:
        st.rerun()
    runview.status_line(snap)
    chart_col, delta_col = st.columns([3, 1])
    with chart_col:
        runview.metric_charts([snap], key="demo_chart", keys=("fooling_ratio", charts.STABILITY_DEFAULT),
                              columns=2, height=300)
        st.caption("**How to read the right chart:** the cosine between each step's update and the mean of all "
                   "the updates before it. High, the steps keep pushing δ the same way and it moves steadily; near "
                   "0, each batch pulls δ elsewhere and successive steps cancel — the instability SGA's aggregated "
                   "small-batch gradients reduce (measured on CIFAR-10: SGA 0.30, small-batch SGD-UAP 0.15).")
    with delta_col:
        if snap.delta is not None:
            widgets.perturbation_image(snap.delta)
        else:
            st.info("δ appears after the first step.")


demo_view()
replay.home_section()  # beside the live demo: a recorded race at a scale a laptop cannot reach live

saved_runs.show_damaged(workspace, "demo", "demo")  # a kept demo result that could not be read: one line
demo = workspace.demo
if demo is not None and not demo.active:
    snap = demo.snapshot()
    if snap.result is not None:
        st.subheader("What the perturbation does")
        runview.headline_metrics(snap.result.summary())
        analysis = runview.job_analysis(demo, snap)
        grid_col, hist_col = st.columns([3, 2])
        with grid_col:
            st.markdown("**Held-out images, clean vs perturbed** (fooled ones first)")
            if analysis is not None:
                widgets.prediction_grid(demo.holdout, analysis, count=6, columns=2)
            else:  # a demo kept across a restart of the server keeps δ and its numbers, not the photos
                st.caption("The photos are shown for a demo run since the server started; this result was kept "
                           "across a restart (δ, its numbers and charts). Run the demo again to see them.")
        with hist_col:
            widgets.histogram_chart(snap.result.evaluation.histogram.as_dict(10), key="demo_hist",
                                    title="Top label of the perturbed held-out images", height=380)
        st.caption("Go further: **Generate** (every model and algorithm, race SGA against SGD-UAP), **Inspect** "
                   "(strength slider, label flips), **Transfer** (black-box table), **Library**.")
    elif snap.error:
        st.error(snap.error)

runview.warm(config, SAMPLES_CHOICE)  # last, once per server: the demo's clean passes, so a click shows a point soon
