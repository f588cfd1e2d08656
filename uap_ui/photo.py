"""Your own photo under a perturbation: a camera shot or an upload, clean vs perturbed, top-5 before and after.

Used by the Inspect page. Drawing only: the top-5 comes from :func:`uap_core.report.photo_report`. The layout is
three columns that Streamlit stacks one above the other on a phone's narrow screen.
"""

from __future__ import annotations

import base64
import html
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


def figure_html(picture, caption: str, kind: str) -> str:
    """A picture and its caption as one HTML element: the PNG inline (a data URI), so the browser never shows the
    caption while the picture is still to be fetched, or lost (a separately served media file can expire between
    a script run and the browser's request when many visitors share the server). ``kind``: "clean" | "perturbed"
    (a data attribute the browser tests find it by)."""
    buffer = io.BytesIO()
    analysis.to_pil(picture).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure data-uap-photo="{kind}" style="margin:0 0 0.5rem 0">'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
            f'style="width:100%;height:auto;display:block;border-radius:0.25rem"/>'
            f'<figcaption style="text-align:center;font-size:0.875rem;opacity:0.65;margin-top:0.25rem">'
            f'{html.escape(caption)}</figcaption></figure>')


def top_table_html(top: TopLabels, kind: str) -> str:
    """The top-5 as an HTML table: rank, label (wraps) and confidence (a bar and the percentage, never cut: the
    table takes its column's width and the long labels wrap, whatever the window's width)."""
    rows = []
    for row in top.rows():
        share = max(0.0, min(1.0, float(row["confidence"])))
        rows.append(
            f'<tr><td style="padding:2px 6px;opacity:0.6">{row["rank"]}</td>'
            f'<td style="padding:2px 6px;overflow-wrap:anywhere">{html.escape(str(row["label"]))}</td>'
            f'<td data-uap-confidence style="padding:2px 6px;white-space:nowrap;text-align:right;width:1%">'
            f'<span style="display:inline-block;width:3.5rem;height:0.5rem;margin-right:0.4rem;'
            f'background:linear-gradient(to right,#ff4b4b {share:.1%},rgba(128,128,128,0.2) {share:.1%});'
            f'border-radius:0.25rem"></span>{share:.1%}</td></tr>')
    return (f'<table data-uap-top5="{kind}" style="width:100%;table-layout:auto;border-collapse:collapse;'
            f'font-size:0.875rem;margin:0"><thead><tr><th style="padding:2px 6px">#</th>'
            f'<th style="padding:2px 6px;text-align:left">label</th>'
            f'<th style="padding:2px 6px;text-align:right">confidence</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


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
        st.markdown(figure_html(report.clean, f"clean: {clean_top.names[0]}", "clean"), unsafe_allow_html=True)
        st.markdown("**Top-5, clean**")
        st.markdown(top_table_html(clean_top, "clean"), unsafe_allow_html=True)
    with middle:
        st.markdown(figure_html(report.perturbed, f"perturbed: {perturbed_top.names[0]}", "perturbed"),
                    unsafe_allow_html=True)
        st.markdown("**Top-5, perturbed**")
        st.markdown(top_table_html(perturbed_top, "perturbed"), unsafe_allow_html=True)
    with right:
        if float(report.delta.abs().max()) > 0:
            perturbation_image(report.delta)
        else:
            st.info("Strength 0: no perturbation.")
        buffer = io.BytesIO()
        analysis.to_pil(report.perturbed).save(buffer, format="PNG")
        st.download_button("Perturbed photo (.png)", data=buffer.getvalue(), file_name="perturbed.png",
                           mime="image/png", on_click="ignore", key=f"{key}_download", icon=":material/download:")


def decoded_photo(key: str, model: Classifier, hint: str) -> torch.Tensor | None:
    """The photo taken or uploaded in the input ``key`` (:func:`photo_input`), decoded at ``model``'s input size and
    resize policy: (3, H, W) float in [0, 1]. None while there is none (``hint`` shown as a caption) or when the file
    cannot be used (one error line saying why)."""
    picked = photo_input(key)
    if picked is None:
        st.caption(hint)
        return None
    name, data = picked
    size, resize = cache.input_geometry(model.spec.name)
    try:
        return decode_image(data, name, size, resize)
    except UAPError as exc:
        st.error(f"This photo cannot be used: {exc}", icon=":material/error:")
        return None


def photo_section(key: str, model: Classifier, delta: torch.Tensor, scale: float) -> None:
    """The whole "your own photo" panel: input, decoding (clear message on a bad file), report."""
    picture = decoded_photo(key, model, "Take or upload a photo to see what the model says of it before and after "
                                        "the perturbation.")
    if picture is None:
        return
    report = photo_report(model, picture, delta, scale=scale)
    show_photo_report(report, key)
