"""Your own photo under a perturbation: a camera shot or an upload, clean vs perturbed, top-5 before and after.

Used by the Inspect page. Drawing only: the top-5 comes from :func:`uap_core.report.photo_report`. The layout is
three columns that Streamlit stacks one above the other on a phone's narrow screen.
"""

from __future__ import annotations

import io

import streamlit as st
import torch

from uap_core.errors import UAPError
from uap_core.images import decode_image
from uap_core.models import Classifier
from uap_core.report import PhotoReport, TopLabels, photo_report

from . import analysis, cache
from .widgets import perturbation_image

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


def photo_input(key: str) -> tuple[str, bytes] | None:
    """A photo from an upload (default; on a phone the picker offers the camera too) or the browser's camera
    (asked for only when chosen, so the page never requests the camera unprompted). Returns (name, bytes)."""
    source = st.radio("Photo from", ["upload", "camera"], horizontal=True, key=f"{key}_source",
                      format_func={"upload": "a file", "camera": "the camera"}.get)
    if source == "camera":
        shot = st.camera_input("Take a photo", key=f"{key}_camera")
        return None if shot is None else ("camera photo", shot.getvalue())
    upload = st.file_uploader("Photo (JPEG, PNG, WebP, …)", type=PHOTO_TYPES, key=f"{key}_upload")
    return None if upload is None else (upload.name, upload.getvalue())


def _top_table(top: TopLabels, key: str, flipped_from: int | None = None) -> None:
    rows = top.rows()
    st.dataframe(rows, hide_index=True, key=key, width="stretch",
                 column_config={"rank": st.column_config.NumberColumn("#", width="small"),
                                "label": st.column_config.TextColumn("label"),
                                "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0,
                                                                               max_value=1.0, format="percent")})


def show_photo_report(report: PhotoReport, key: str) -> None:
    """Clean | perturbed | δ, each with its caption; the top-5 tables under the two pictures; a verdict line."""
    clean_top, perturbed_top = report.clean_top, report.perturbed_top
    if report.flipped:
        st.markdown(f":red[**Label flipped:**] **{clean_top.names[0]}** ({clean_top.confidences[0]:.0%}) → "
                    f"**{perturbed_top.names[0]}** ({perturbed_top.confidences[0]:.0%})")
    else:
        st.markdown(f":green[**Not fooled:**] still **{clean_top.names[0]}** ({clean_top.confidences[0]:.0%} → "
                    f"{perturbed_top.confidences[0]:.0%}); try a higher strength.")
    left, middle, right = st.columns(3)
    with left:
        st.image(analysis.to_pil(report.clean), caption=f"clean: {clean_top.names[0]}", output_format="PNG",
                 width="stretch")
        st.markdown("**Top-5, clean**")
        _top_table(clean_top, f"{key}_top_clean")
    with middle:
        st.image(analysis.to_pil(report.perturbed), caption=f"perturbed: {perturbed_top.names[0]}",
                 output_format="PNG", width="stretch")
        st.markdown("**Top-5, perturbed**")
        _top_table(perturbed_top, f"{key}_top_perturbed")
    with right:
        if float(report.delta.abs().max()) > 0:
            perturbation_image(report.delta)
        else:
            st.info("Strength 0: no perturbation.")
        buffer = io.BytesIO()
        analysis.to_pil(report.perturbed).save(buffer, format="PNG")
        st.download_button("Perturbed photo (.png)", data=buffer.getvalue(), file_name="perturbed.png",
                           mime="image/png", on_click="ignore", key=f"{key}_download", icon=":material/download:")


def photo_section(key: str, model: Classifier, delta: torch.Tensor, scale: float) -> None:
    """The whole "your own photo" panel: input, decoding (clear message on a bad file), report."""
    picked = photo_input(key)
    if picked is None:
        st.caption("Take or upload a photo to see what the model says of it before and after the perturbation.")
        return
    name, data = picked
    size, resize = cache.input_geometry(model.spec.name)
    try:
        picture = decode_image(data, name, size, resize)
    except UAPError as exc:
        st.error(f"This photo cannot be used: {exc}", icon=":material/error:")
        return
    report = photo_report(model, picture, delta, scale=scale)
    show_photo_report(report, key)
