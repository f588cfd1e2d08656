"""Studies: the papers' experiments — pick one, set it up, run it in the background, watch its figure fill in."""

from __future__ import annotations

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.errors import UAPError
from uap_core.studies import get_study, study_names
from uap_core.studies.needs import study_needs
from uap_core.studies.setups import SETUPS, setup_defaults
from uap_ui import cache, runview, studyview, widgets
from uap_ui.page import setup_page
from uap_ui.session import current_workspace

workspace = setup_page("Studies")
st.title("Studies: the papers' experiments")
st.caption("Each study reruns one experiment of the UAP papers — how many images a UAP needs, how batch size "
           "shakes the update direction, how well UAPs transfer between models — on a model of the registry. It "
           "runs in the background (switch pages, it goes on); the figure fills in as results arrive, and the "
           "tables, the settings and the figure can be downloaded. On CIFAR-10 the defaults are the papers' scale: "
           "hours on a CPU, minutes on a GPU; shrink the lists for a quick look. On EfficientNet-Lite0 every study "
           "runs offline on your own images, with defaults sized for a few dozen of them.")

names = study_names()
name = st.selectbox("Study", names, key="study_pick", format_func=lambda n: get_study(n).title)
cls = get_study(name)
st.markdown(f"{cls.summary}  \n*{cls.paper}*")
with st.expander("The paper's claim, what is measured, where it differs"):
    st.text(studyview.about(cls))

setup = st.radio("Run it on", list(SETUPS), key="study_setup", horizontal=True,
                 format_func=lambda s: SETUPS[s].label,
                 help="CIFAR-10: the papers' scale on CIFAR-10 ResNet-20 and the 10,000 CIFAR-10 test images "
                      "(downloaded once into the cache). EfficientNet-Lite0: offline, on your images (a folder, "
                      "the embedded samples or an upload), with small defaults sized for a few dozen images.")
choice = None
if SETUPS[setup].images is None:  # the user's own images
    choice = widgets.image_source_picker("study_src", kinds=("folder", "samples", "upload"))

task, _live = studyview.current(workspace)
busy = task is not None and task.active
with st.form(f"study_form_{name}_{setup}", border=True):
    values = studyview.settings_form(cls, "study" if setup == "cifar10" else f"study_{setup}",
                                     defaults=setup_defaults(name, setup), skip=("images",) if choice else ())
    run = st.form_submit_button("Run the study", type="primary", icon=":material/play_arrow:", disabled=busy)
st.button("Stop", key="study_stop", icon=":material/stop:", on_click=studyview.stop, args=(workspace,),
          disabled=not busy, help="Ends the study after the current step; the rows finished so far are kept.")


def chosen_images() -> str:
    """The image source of the Lite0 setup: a folder path, "samples", or the uploads stored in a folder."""
    widgets.check_image_choice(choice)
    if choice.kind == "upload":
        if not choice.uploads:
            raise UAPError("no files uploaded yet: upload the images the study should use")
        return cache.upload_folder(choice.uploads)
    if not choice.source:
        raise UAPError("enter a folder path first")
    return choice.source


needs = None
try:
    if choice is not None:
        values["images"] = chosen_images()
    needs = study_needs(cls(settings=values))
    studyview.show_needs(needs)
except UAPError as exc:
    if not run:
        st.caption(f"Before it starts: {exc}")

if run and not busy:
    try:
        if choice is not None:
            values["images"] = chosen_images()
        studyview.check_paths(cls, {k: v for k, v in values.items() if not (choice and k == "images")})
        needs = study_needs(cls(settings=values))
        if not needs.ready:
            raise UAPError("; ".join(needs.problems()))
        studyview.fetch_with_progress(needs)  # the downloads due (st.progress), before the study starts
        studyview.start_study(workspace, name, values)
        st.rerun()  # redraw the buttons (Stop enabled) and start polling
    except UAPError as exc:
        st.error(str(exc), icon=":material/error:")


@st.fragment(run_every=runview.poll_seconds() if busy else None)
def study_view() -> None:
    """Redrawn while the study runs: progress, the figure from the rows so far; at the end the summary and the
    downloads. One full rerun when it ends (the buttons change)."""
    current, live = studyview.current(current_workspace())
    if current is None:
        st.info("Set the study up and press **Run the study**: its figure appears here and fills in as results "
                "arrive.", icon=":material/science:")
        return
    snap = current.snapshot()
    if busy and not snap.active:
        st.rerun()
    result = snap.result if not snap.active and snap.result is not None else (
        live.provisional() if live is not None else None)
    heading = result.title if result is not None else snap.label
    st.subheader(heading)
    if snap.active:
        st.progress(snap.progress, text=snap.message or "starting")
    elif snap.state == "stopped":
        st.warning("Stopped: the tables hold the runs that finished.", icon=":material/stop_circle:")
    if snap.error:
        st.error(snap.error, icon=":material/error:")
    if result is None:
        return
    st.plotly_chart(studyview.figure_of(result), key="study_figure", width="stretch")
    if snap.active:
        return
    if result.summary:
        with st.expander("Summary (the numbers the claim is about)", expanded=True):
            st.json(result.summary)
    main_table = next(iter(result.tables.values()), [])
    if main_table:
        st.dataframe(main_table, hide_index=True, key="study_table")
    studyview.downloads(result, key="study_dl")


study_view()
