"""Transfer: several saved UAPs × several models → the black-box table of fooling ratios, as a heatmap."""

from __future__ import annotations

import csv
import io

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.errors import UAPError
from uap_core.transfer import TransferMatrix, transfer_matrix
from uap_ui import cache, charts, runview, spaces, widgets
from uap_ui.jobs import Task, Workspace
from uap_ui.page import setup_page
from uap_ui.session import current_workspace

TASK = "transfer"

workspace = setup_page("Transfer")
st.title("Transfer: does a perturbation fool other models?")
st.caption("Each saved UAP is added to the same images and every model classifies them: the fooling ratio of "
           "UAP i on model j. The diagonal-like cells (a UAP on its own model) are white-box, the rest black-box.")

library = spaces.library()  # on a class server: the visitor's own space, the owner's library and the shipped zoo
with spaces.LIBRARY_LOCK:
    entries = [e for e in library.list() if e.error is None]
statuses = cache.model_statuses()
available = [s.spec.name for s in statuses if s.available]
all_models = [s.spec.name for s in statuses]
by_model = {s.spec.name: s for s in statuses}

if not entries:
    st.info("The library holds no perturbation yet: generate one (or upload one on the Library page) first.",
            icon=":material/inventory_2:")

left, right = st.columns(2)
with left:
    names = [e.name for e in entries]
    chosen_uaps = st.multiselect("Perturbations", names, default=names[:3], key="tr_uaps",
                                 help="From the library (newest first).")
    default_models = [m for m in ("efficientnet_lite0", "efficientnet_lite1") if m in available] or available[:1]
    chosen_models = st.multiselect(
        "Models", all_models, default=default_models, key="tr_models",
        format_func=lambda n: f"{n} — {widgets.STATE_LABELS.get(by_model[n].state, by_model[n].state)}",
        help="Models that are not available offline are reported in the table's notes.")
with right:
    choice = widgets.image_source_picker("tr", kinds=("samples", "folder", "npz"))
    c1, c2 = st.columns(2)
    limit = c1.number_input("At most this many images", min_value=1, max_value=50_000, value=50, step=1,
                            key="tr_limit", persist_state="session")
    with c2:
        device = widgets.device_picker("tr_device")


def stop_task(ws: Workspace) -> None:
    runview.stop_job(ws, ws.task(TASK))


task = workspace.task(TASK)
busy = task is not None and task.active
b1, b2, _ = st.columns([1, 1, 3])
compute = b1.button("Compute the table", type="primary", key="tr_compute", icon=":material/grid_on:",
                    disabled=busy or not chosen_uaps or not chosen_models, width="stretch")
b2.button("Stop", key="tr_stop", on_click=stop_task, args=(workspace,), disabled=not busy, width="stretch")


def start_transfer() -> Task | None:
    """Load the UAPs and the available models here (cached, errors shown), then fill the table in a worker."""
    if not choice.source and not choice.error:
        st.error("Enter a folder or .npz path first.")
        return None
    try:
        widgets.check_image_choice(choice)  # a folder this session may not read, an upload over the limit
        with spaces.LIBRARY_LOCK:
            uaps = {name: library.load(name) for name in chosen_uaps}
    except UAPError as exc:
        st.error(str(exc))
        return None
    models, errors = {}, {}
    for name in chosen_models:
        status = by_model[name]
        if not status.available:
            errors[name] = f"not available offline ({status.state}): {status.detail}"
            continue
        try:
            models[name] = cache.model(name, device)
        except UAPError as exc:
            errors[name] = str(exc)
    source, order = choice.source, list(chosen_models)

    def work(report, stopped) -> TransferMatrix:
        values = [[None] * len(order) for _ in uaps]
        count = 0
        for j, name in enumerate(order):
            if stopped():
                break
            report(j / len(order), f"model {j + 1}/{len(order)}: {name}")
            if name not in models:
                continue
            column = transfer_matrix(uaps, [name], source, device=device, limit=int(limit), models={name: models[name]})
            errors.update(column.errors)
            count = column.image_count or count
            for i, row in enumerate(column.fooling_ratio):
                values[i][j] = row[0]
        return TransferMatrix(list(uaps), order, values, dict(errors), count)

    uses_gpu = any(model.device.type == "cuda" for model in models.values())
    return Task(work, "transfer table", uses_gpu=uses_gpu).start()


if compute:
    new_task = start_transfer()
    if new_task is not None:
        workspace.set_task(TASK, new_task)
        busy = True


@st.fragment(run_every=runview.poll_seconds() if busy else None)
def table_view() -> None:
    current = current_workspace().task(TASK)
    if current is None:
        st.info("Pick perturbations and models, then **Compute the table**.", icon=":material/grid_on:")
        return
    snap = current.snapshot()
    if busy and not snap.active:
        st.rerun()
    if snap.active:
        st.progress(snap.progress, text=snap.message)  # while it waits: "in queue: 2nd, about 30 s"
        if snap.queue is not None:
            runview.queue_caption(snap)
        return
    if snap.error:
        st.error(snap.error, icon=":material/error:")
        return
    matrix: TransferMatrix | None = snap.result
    if matrix is None:
        st.info("Stopped before any result.")
        return
    if snap.state == "stopped":
        st.warning("Stopped: the table is incomplete.")
    st.plotly_chart(charts.transfer_heatmap(matrix.uap_names, matrix.model_names, matrix.fooling_ratio,
                                            title=f"Fooling ratio on {matrix.image_count} images"),
                    key="tr_heatmap", width="stretch")
    rows = [{"UAP": u, **{m: (None if v is None else round(v, 3)) for m, v in zip(matrix.model_names, row)}}
            for u, row in zip(matrix.uap_names, matrix.fooling_ratio)]
    st.dataframe(rows, hide_index=True, key="tr_table")
    for model_name, message in matrix.errors.items():
        st.warning(f"**{model_name}**: {message}", icon=":material/cloud_off:")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["uap", *matrix.model_names])
    for u, row in zip(matrix.uap_names, matrix.fooling_ratio):
        writer.writerow([u, *["" if v is None else f"{v:.4f}" for v in row]])
    st.download_button("Table (.csv)", data=buffer.getvalue(), file_name="transfer.csv", mime="text/csv",
                       on_click="ignore", key="tr_csv", icon=":material/download:")


table_view()
