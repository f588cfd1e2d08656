"""Library: the saved perturbations with their metadata and metric history; rename, delete, download, upload."""

from __future__ import annotations

import datetime as dt
import json

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.artifacts import perturbation_png, uap_to_bytes
from uap_core.errors import UAPError
from uap_ui import charts, replay, spaces
from uap_ui.jobs import short_algorithm_name
from uap_ui.page import setup_page

setup_page("Library")
st.title("Library")
library = spaces.library()  # a visitor of a class server: their own space + read-only sources
# a visitor of a class server is not shown where on the server their space lies
where = ("your own space on this server" if spaces.space_name()
         else f"`{library.root}` (set `UAP_LIBRARY_DIR` to use another folder)")
st.caption(f"Saved perturbations in {where}. Entries named *shipped: …* come with UAP Explorer (`assets/uaps`, "
           "built by `python assets/make_zoo.py`): ready to inspect and transfer, read-only.")
if spaces.space_name():
    st.caption(":material/school: On this class server what you save or import stays in your own space; entries "
               "named *owner: …* belong to the server's owner (read-only; renaming or deleting them takes the "
               "owner's password).")

_FLASH = "_library_flash"
if st.session_state.get(_FLASH):
    st.success(st.session_state.pop(_FLASH), icon=":material/check:")


def flash(message: str) -> None:
    """Show ``message`` after the rerun that refreshes the list."""
    st.session_state[_FLASH] = message
    st.rerun()


with spaces.LIBRARY_LOCK:
    entries = library.list()


def row(entry) -> dict:
    meta, summary = entry.metadata, entry.metadata.get("summary") or {}
    eps = meta.get("eps")
    return {
        "name": entry.name, "source": entry.source + (" (read-only)" if entry.read_only else ""), "model": meta.get("model"), "algorithm": short_algorithm_name(meta.get("algorithm") or ""),
        "eps": f"{float(eps) * 255:g}/255" if isinstance(eps, (int, float)) else None, "norm": meta.get("norm"),
        "seed": meta.get("seed"), "held-out fooling ratio": summary.get("fooling_ratio"),
        "random noise": summary.get("random_fooling_ratio"),
        "size": "×".join(map(str, entry.shape[1:])) if entry.shape else None,
        "saved": dt.datetime.fromtimestamp(entry.modified).strftime("%Y-%m-%d %H:%M"),
        "status": "ok" if entry.error is None else f"unreadable: {entry.error}",
    }


if not entries:
    st.info("Nothing saved yet: generate a perturbation and press **Save to the library**, or upload one below.",
            icon=":material/inventory_2:")
else:
    st.dataframe([row(e) for e in entries], hide_index=True, key="lib_table",
                 column_config={"held-out fooling ratio": st.column_config.NumberColumn(format="percent"),
                                "random noise": st.column_config.NumberColumn(format="percent")})
    by_name = {e.name: e for e in entries}
    name = st.selectbox("Entry", list(by_name), key="lib_entry")
    entry = by_name[name]
    if entry.error:
        st.error(f"{entry.name} cannot be read: {entry.error}")
    else:
        preview, details = st.columns([1, 2])
        with preview:
            png = entry.path.with_suffix(".png")
            try:
                artifact = library.load(entry.name)
            except UAPError as exc:
                st.error(str(exc))
                artifact = None
            if artifact is not None:
                data, scale = perturbation_png(artifact.delta)
                st.image(data, caption=f"amplified ×{scale:.1f} (grey = 0)", output_format="PNG", width="stretch")
                st.download_button("Download (.safetensors with metadata)",
                                   data=lambda: uap_to_bytes(artifact.delta, artifact.metadata),
                                   file_name=f"{entry.name}.safetensors", mime="application/octet-stream",
                                   on_click="ignore", key="lib_download", icon=":material/download:")
                if png.is_file():
                    st.download_button("Download the preview (.png)", data=png.read_bytes(),
                                       file_name=png.name, mime="image/png", on_click="ignore",
                                       key="lib_download_png", icon=":material/image:")
        with details:
            history = entry.metadata.get("history") or []
            if history:
                series = [charts.RunSeries(entry.name, history, charts.color_for(0))]
                c1, c2 = st.columns(2)
                c1.plotly_chart(charts.metric_figure(series, charts.metric_spec("fooling_ratio"), height=260),
                                key="lib_hist_fr", width="stretch")
                c2.plotly_chart(charts.metric_figure(series, charts.metric_spec("grad_cosine"), height=260),
                                key="lib_hist_cos", width="stretch")
            else:
                st.caption("No metric history saved with this entry.")
            replay.library_section(entry, artifact)
            with st.expander("Metadata"):
                st.code(json.dumps({k: v for k, v in entry.metadata.items() if k != "history"}, indent=1,
                                   default=str)[:20000], language="json")

    rights = spaces.manage_rights(entry)  # "manage", "password" (the owner's entries) or "read"
    if rights == "read":
        st.caption(f":material/lock: **{entry.name}** is read-only ({entry.source}): it cannot be renamed, "
                   "deleted or overwritten. Download it to keep a copy of your own.")
    else:
        with st.container(border=True):
            st.markdown(f"**Manage `{entry.name}`**")
            r1, r2 = st.columns(2)
            with r1:
                with st.form("lib_rename_form", border=False):
                    new_name = st.text_input("New name", value=entry.name.split(": ", 1)[-1], key="lib_new_name")
                    password = st.text_input("Owner's password", type="password", key="lib_rename_password") \
                        if rights == "password" else None
                    if st.form_submit_button("Rename", icon=":material/edit:"):
                        try:
                            target, stem = spaces.manage_target(entry, password)
                            with spaces.LIBRARY_LOCK:
                                renamed = target.rename(stem, new_name)
                            flash(f"Renamed {entry.name} to {renamed.name}.")
                        except UAPError as exc:
                            st.error(str(exc))
            with r2:
                with st.form("lib_delete_form", border=False):
                    sure = st.checkbox(f"Yes, delete {entry.name}", key="lib_delete_sure")
                    password = st.text_input("Owner's password", type="password", key="lib_delete_password") \
                        if rights == "password" else None
                    if st.form_submit_button("Delete", icon=":material/delete:"):
                        if not sure:
                            st.warning("Tick the box to confirm.")
                        else:
                            try:
                                target, stem = spaces.manage_target(entry, password)
                                with spaces.LIBRARY_LOCK:
                                    target.delete(stem)
                                flash(f"Deleted {entry.name}.")
                            except UAPError as exc:
                                st.error(str(exc))

st.subheader("Upload a perturbation")
with st.form("lib_upload_form", clear_on_submit=False):
    upload = st.file_uploader("File (.safetensors, .pt/.pth, .npy or .mat: a 3×H×W tensor in pixel units, or a published UAP — the UAP paper's .mat, GD-UAP's and TRM-UAP's .npy, SGD-UAP's .pth — converted, the conversion recorded)",
                              type=["safetensors", "pt", "pth", "npy", "mat"], key="lib_upload",
                              max_upload_size=max(1, int(spaces.upload_limit_mb())))
    upload_name = st.text_input("Name in the library (default: the file name)", key="lib_upload_name")
    if st.form_submit_button("Import", icon=":material/upload:"):
        if upload is None:
            st.error("Choose a file first.")
        else:
            target = upload_name.strip() or upload.name.rsplit(".", 1)[0]
            try:
                spaces.check_upload(upload.size)
                with spaces.LIBRARY_LOCK:
                    imported = library.import_bytes(target, upload.getvalue(), upload.name)
                flash(f"Imported {upload.name} as {imported.name}.")
            except UAPError as exc:
                st.error(f"Not imported: {exc}", icon=":material/error:")
