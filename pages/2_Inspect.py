"""Inspect: what one perturbation does to a model's predictions, image by image, at any strength."""

from __future__ import annotations

import hashlib
import json

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.artifacts import UAPArtifact, load_uap_bytes, perturbation_png
from uap_core.errors import UAPError
from uap_core.models import model_names
from uap_core.report import PerturbationReport
from uap_core.transfer import evaluate_uap
from uap_ui import analysis, cache, photo, physical, runview, spaces, widgets
from uap_ui.page import setup_page

setup_page("Inspect")
st.title("Inspect a perturbation")
st.caption("Clean vs perturbed predictions, the labels the perturbation pushes images to, and how both change "
           "with its strength.")


@st.cache_resource(max_entries=16, show_spinner="Classifying the images with the perturbation…")
def _analysis(uap_key: str, image_key: str, model_name: str, device: str, scale: float, _model, _images, _artifact,
              _clean_logits) -> PerturbationReport:
    return evaluate_uap(_artifact, _model, _images, scale=scale, clean_logits=_clean_logits)


def pick_uap() -> tuple[str, UAPArtifact] | None:
    """The perturbation to inspect (from the library or an upload), or None after a message."""
    source = st.radio("Perturbation", ["library", "upload"], horizontal=True, key="insp_source",
                      format_func={"library": "From the library", "upload": "Upload a file"}.get,
                      persist_state="session")
    if source == "library":
        with spaces.LIBRARY_LOCK:
            entries = [e for e in spaces.library().list() if e.error is None]
        if not entries:
            st.info("The library is empty (and no shipped perturbation was found in assets/uaps): generate a "
                    "perturbation and save it, or upload one.",
                    icon=":material/inventory_2:")
            return None
        by_name = {e.name: e for e in entries}
        name = st.selectbox("Saved perturbation", list(by_name), key="insp_uap", persist_state="session",
                            format_func=lambda n: _entry_label(by_name[n]))
        entry = by_name[name]
        try:
            with spaces.LIBRARY_LOCK:
                artifact = spaces.library().load(name)
        except UAPError as exc:
            st.error(str(exc))
            return None
        return f"lib:{name}:{entry.modified}", artifact
    upload = st.file_uploader("Perturbation file (.safetensors, .pt/.pth, .npy, or a published .mat: the UAP paper's, GD-UAP's, TRM-UAP's and SGD-UAP's files are converted)",
                              type=["safetensors", "pt", "pth", "npy", "mat"], key="insp_upload")
    if upload is None:
        st.info("Upload a perturbation file.", icon=":material/upload_file:")
        return None
    data = upload.getvalue()
    try:
        artifact = load_uap_bytes(data, upload.name)
    except UAPError as exc:
        st.error(f"This file cannot be used as a perturbation: {exc}", icon=":material/error:")
        return None
    return "upload:" + hashlib.sha256(data).hexdigest(), artifact


def _entry_label(entry) -> str:
    meta = entry.metadata
    fooling = (meta.get("summary") or {}).get("fooling_ratio")
    parts = [entry.name, meta.get("model") or "", meta.get("algorithm") or ""]
    if fooling is not None:
        parts.append(f"FR {fooling:.0%}")
    return " · ".join(p for p in parts if p)


top_left, top_right = st.columns(2)
with top_left:
    picked = pick_uap()
    uap_key, artifact = picked if picked else (None, None)
with top_right:
    made_for = (artifact.metadata.get("model") if artifact is not None else None) or widgets.DEFAULT_MODEL
    status = widgets.model_picker(f"insp_model_{uap_key}", default=made_for if made_for in model_names() else None,
                                  persist=False, help="Defaults to the model the perturbation was made for; "
                                                      "pick another to test transfer.")
    model_ok = widgets.model_ready(status, "insp_model")
    choice = widgets.image_source_picker("insp")
    limit = st.number_input("At most this many images", min_value=2, max_value=5000, value=50, step=1,
                            key="insp_limit", persist_state="session")

strength = st.slider("Strength: δ scaled by", min_value=0.0, max_value=2.0, value=1.0, step=0.05,
                     key="insp_strength", help="0 = no perturbation, 1 = as saved, 2 = twice as strong (over its "
                                               "budget). The fooling ratio and the histogram follow.")

if artifact is None or not model_ok:
    st.stop()

model = widgets.load_model_or_error(status.spec.name)
if model is None:
    st.stop()

with st.container(border=True):
    st.subheader("Your own photo")
    photo.photo_section("insp_photo", model, artifact.delta, float(strength))

with st.container(border=True, key="insp_physical"):
    st.subheader("Print or show it, then photograph it")
    physical.physical_section("insp_phys", model, artifact.delta, float(strength))

st.subheader("A set of images")
try:
    images = widgets.load_image_choice(choice, status.spec.name, limit=int(limit))
except UAPError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()
widgets.show_skipped(images)
image_key = widgets.image_key(choice, status.spec.name, None, int(limit))
device = str(model.device)
clean = cache.clean_logits(status.spec.name, device, image_key, model, images.pixels)
result = _analysis(uap_key, image_key, status.spec.name, device, float(strength), model, images, artifact,
                   clean)

# ---------------------------------------------------------------------------------------------- numbers
cols = st.columns(5)
cols[0].metric("Fooling ratio", widgets.percent(result.fooling_ratio),
               help=f"share of the {result.count} images whose top-1 label changes")
cols[1].metric("Random noise, same norm", widgets.percent(result.random_fooling_ratio))
cols[2].metric("Fooled images", f"{result.fooled_count} / {result.count}")
dominant = result.evaluation.histogram.dominant
cols[3].metric("Dominant label", dominant.name if dominant else "—",
               help=f"{dominant.share:.0%} of the perturbed images" if dominant else None)
cols[4].metric("max |δ| at this strength", f"{float(result.delta.abs().max()) * 255:.1f}/255")
runview.fooling_rate_caption(result.evaluation.fooling_rate_fields())
if result.resized_from:
    st.caption(f"The perturbation was made at {result.resized_from[0]}×{result.resized_from[1]} and is resampled "
               f"to this model's {tuple(result.delta.shape[1:])[0]}×{tuple(result.delta.shape[1:])[1]} input.")
if artifact.metadata.get("metadata_missing"):
    st.caption("This file carries no metadata (model, eps, … unknown).")

# ---------------------------------------------------------------------------------------------- δ and histogram
left, right = st.columns([1, 2])
with left:
    st.markdown("**The perturbation**")
    if float(result.delta.abs().max()) > 0:
        widgets.perturbation_image(result.delta)
    else:
        st.info("Strength 0: no perturbation.")
    meta = artifact.metadata
    facts = {k: meta.get(k) for k in ("model", "algorithm", "eps", "norm", "seed", "target") if meta.get(k) is not None}
    if "eps" in facts:
        facts["eps"] = f"{float(facts['eps']) * 255:g}/255"
    if facts:
        st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))
with right:
    over = st.radio("Histogram over", ["all", "fooled"], horizontal=True, key="insp_hist_over",
                    format_func={"all": "all perturbed images", "fooled": "fooled images only"}.get)
    histogram = result.evaluation.histogram if over == "all" else result.evaluation.histogram_fooled
    suffix = " (fooled only)" if over == "fooled" else ""
    widgets.histogram_chart(histogram.as_dict(15), key="insp_hist", title=f"Top-1 labels under the perturbation{suffix}")

# ---------------------------------------------------------------------------------------------- the grid
st.subheader("Clean vs perturbed")
g1, g2, _ = st.columns([1, 1, 2])
count = g1.number_input("Pairs shown", min_value=1, max_value=200, value=8, step=1, key="insp_count")
only_fooled = g2.checkbox("Only fooled images", key="insp_only_fooled")
widgets.prediction_grid(images, result, count=int(count), only_fooled=only_fooled)

# ---------------------------------------------------------------------------------------------- tables, downloads
flips_col, table_col = st.columns([1, 2])
with flips_col:
    st.markdown("**Label flips** (clean label → perturbed label)")
    flips = analysis.label_flips(result)
    if flips:
        st.dataframe(flips, hide_index=True, key="insp_flips")
    else:
        st.caption("No label changes at this strength.")
with table_col:
    st.markdown("**Every image**")
    st.dataframe([{"image": p.name, "clean": f"{p.clean_name} ({p.clean_confidence:.0%})",
                   "perturbed": f"{p.perturbed_name} ({p.perturbed_confidence:.0%})", "fooled": p.fooled}
                  for p in result.predictions], hide_index=True, key="insp_table", height=260)

d1, d2, d3 = st.columns(3)
stem = (uap_key or "uap").split(":")[1][:40] if uap_key else "uap"
d1.download_button("Perturbation PNG (amplified)", data=lambda: perturbation_png(result.delta)[0],
                   file_name=f"{stem}-x{strength:g}.png", mime="image/png", on_click="ignore", key="insp_dl_png",
                   icon=":material/download:")
d2.download_button("Perturbed images (.zip of PNG)", data=lambda: analysis.perturbed_zip(images, result.delta),
                   file_name=f"{stem}-perturbed.zip", mime="application/zip", on_click="ignore", key="insp_dl_zip",
                   icon=":material/download:")
d3.download_button("Predictions (.csv)", data=lambda: analysis.predictions_csv(result),
                   file_name=f"{stem}-predictions.csv", mime="text/csv", on_click="ignore", key="insp_dl_csv",
                   icon=":material/download:")
with st.expander("Metadata of the perturbation"):
    st.code(json.dumps({k: v for k, v in artifact.metadata.items() if k != "history"}, indent=1, default=str)[:20000],
            language="json")
