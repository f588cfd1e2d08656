"""The physical check on the Inspect page: "Print or show it, then photograph it".

One image (an embedded sample or an upload) with δ added is shown large (full-screen-ready, δ's pixels kept
crisp) and offered as a print-size PNG; a photo of it (the camera, asked for only when chosen, or a file) is then
classified and its top-5 set beside the clean image's and the digital perturbed image's. Drawing only: the
upscaling, the print size and the labels come from :mod:`uap_core.physical`.
"""

from __future__ import annotations

import io

import streamlit as st
import torch

from uap_core.errors import UAPError
from uap_core.images import decode_image
from uap_core.models import Classifier
from uap_core.physical import (PhysicalReport, physical_report, print_png, print_size, screen_factor,
                               upscale_nearest)
from uap_core.report import photo_report

from . import analysis, cache
from .photo import PHOTO_TYPES, decoded_photo, figure_html, top_table_html

NEW_IMAGE_NOTE = ("**The photo is a new image.** δ is not added to it again: the screen or the printer, the "
                  "camera, the light and the angle all change the perturbed pixels, so what the model says of the "
                  "photo is the physical test of δ, not the digital one. Fill the camera's frame with the image "
                  "(the model sees the centre square of the photo).")
DPI_CHOICES = [150, 300, 600]
FIGURE_SIDE = 224  # pixels: smaller pictures (CIFAR's 32) are upscaled to at least this in the report


def pick_picture(key: str, model: Classifier) -> tuple[str, torch.Tensor] | None:
    """One image at the model's input size: an embedded sample (default) or an upload. Returns (name, (3, H, W)
    uint8), or None after a message."""
    source = st.radio("Image", ["samples", "upload"], horizontal=True, key=f"{key}_source",
                      format_func={"samples": "an embedded sample", "upload": "a file of yours"}.get)
    if source == "samples":
        samples = cache.images("samples", model.spec.name)
        index = st.selectbox("Sample", range(len(samples)), format_func=lambda i: samples.names[i],
                             key=f"{key}_sample")
        return samples.names[index], samples.pixels[index]
    upload = st.file_uploader("Image (JPEG, PNG, WebP, …)", type=PHOTO_TYPES, key=f"{key}_upload")
    if upload is None:
        st.caption("Upload the image to print or show.")
        return None
    size, resize = cache.input_geometry(model.spec.name)
    try:
        return upload.name, decode_image(upload.getvalue(), upload.name, size, resize)
    except UAPError as exc:
        st.error(f"This image cannot be used: {exc}", icon=":material/error:")
        return None


@st.cache_data(max_entries=4, show_spinner=False)
def _screen_png(pixels: bytes, height: int, width: int) -> bytes:
    """The perturbed picture (raw (3, H, W) uint8 bytes) upscaled for a screen, as PNG (encoded once per picture)."""
    picture = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(3, height, width)
    buffer = io.BytesIO()
    analysis.to_pil(upscale_nearest(picture, screen_factor(height, width))).save(buffer, format="PNG")
    return buffer.getvalue()


def show_large(key: str, perturbed: torch.Tensor, caption: str) -> None:
    """The perturbed picture large (nearest-neighbour upscaled, drawn pixelated at any zoom), with Streamlit's
    full-screen button (it appears when the pointer is over the image)."""
    height, width = perturbed.shape[1:]
    png = _screen_png(perturbed.contiguous().numpy().tobytes(), int(height), int(width))
    st.markdown(f"<style>.st-key-{key}_show img {{image-rendering: pixelated;}}</style>", unsafe_allow_html=True)
    with st.container(key=f"{key}_show"):
        st.image(png, caption=caption, output_format="PNG", width="stretch")


def verdict(report: PhysicalReport) -> str:
    """One line: does the photo still fool the model (its top-1 label against the clean image's)."""
    clean, digital, photo = report.clean_top, report.perturbed_top, report.photo_top
    if report.photo_fooled:
        text = (f":red[**The photo fools the model:**] the photo is **{photo.names[0]}** "
                f"({photo.confidences[0]:.0%}), the clean image **{clean.names[0]}** ({clean.confidences[0]:.0%})")
        if report.photo_as_digital:
            return text + ", and the photo keeps the digital perturbed image's label."
        return text + f"; the digital perturbed image is **{digital.names[0]}**."
    text = (f":green[**The photo does not fool the model:**] the photo is **{photo.names[0]}** "
            f"({photo.confidences[0]:.0%}), like the clean image")
    if report.digital_fooled:
        return text + (f"; the digital perturbed image is **{digital.names[0]}**: δ did not survive the trip "
                       f"through the screen or the print and the camera.")
    return text + "; the digital perturbed image is not fooled either: try a higher strength or another image."


def show_physical_report(report: PhysicalReport) -> None:
    """The verdict, then clean | perturbed (digital) | the photo, each with its top-5."""
    st.markdown(verdict(report))
    columns = st.columns(3)
    parts = [("physical-clean", "clean", report.clean, report.clean_top, "Top-5, clean image"),
             ("physical-perturbed", "perturbed (digital)", report.perturbed, report.perturbed_top,
              "Top-5, perturbed image (digital)"),
             ("physical-photo", "your photo, as the model sees it", report.photo, report.photo_top,
              "Top-5, your photo")]
    for column, (kind, what, picture, top, title) in zip(columns, parts):
        factor = screen_factor(*picture.shape[1:], side=FIGURE_SIDE)  # a 32-px picture drawn with crisp pixels
        with column:
            st.markdown(figure_html(upscale_nearest(picture, factor), f"{what}: {top.names[0]}", kind),
                        unsafe_allow_html=True)
            st.markdown(f"**{title}**")
            st.markdown(top_table_html(top, kind), unsafe_allow_html=True)


def physical_section(key: str, model: Classifier, delta: torch.Tensor, scale: float) -> None:
    """The whole panel: the image to show or print, then the photo of it and its report."""
    st.caption("Does δ survive the real world? Show the perturbed image on a screen or print it, photograph it, "
               "and see what the model says of the photo.")
    show_col, settings_col = st.columns([3, 2])
    with settings_col:
        picked = pick_picture(key, model)
    if picked is None:
        return
    name, picture = picked
    digital = photo_report(model, picture, delta, scale=scale)
    height, width = picture.shape[1:]
    with settings_col:
        st.markdown(f"The model on this image: clean **{digital.clean_top.names[0]}** "
                    f"({digital.clean_top.confidences[0]:.0%}) → perturbed **{digital.perturbed_top.names[0]}** "
                    f"({digital.perturbed_top.confidences[0]:.0%})"
                    + (" — fooled." if digital.flipped else " — not fooled."))
        width_col, dpi_col = st.columns(2)
        width_cm = width_col.number_input("Print width (cm)", min_value=2.0, max_value=60.0, value=15.0, step=1.0,
                                          key=f"{key}_width_cm")
        dpi = dpi_col.selectbox("DPI", DPI_CHOICES, index=1, key=f"{key}_dpi")
        size = print_size(int(height), int(width), float(width_cm), int(dpi))
        st.caption(f"Print PNG: {size.describe()}. Each pixel of the image is a crisp square (nearest neighbour), "
                   f"so δ's pixels print unblurred; print it at 100 % (no fit-to-page).")
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0][:40] or "image"
        st.download_button("Print-size PNG", data=lambda: print_png(digital.perturbed, size),
                           file_name=f"{stem}-perturbed-x{scale:g}-{dpi}dpi.png", mime="image/png",
                           on_click="ignore", key=f"{key}_print", icon=":material/print:")
    with show_col:
        show_large(key, digital.perturbed,
                   f"{name} with δ×{scale:g} ({width}×{height} px). To show it alone on a screen, point at it and "
                   f"press the full-screen button at its top right (Esc to leave).")

    st.markdown("#### Take a photo of it")
    st.info(NEW_IMAGE_NOTE, icon=":material/photo_camera:")
    photo = decoded_photo(f"{key}_photo", model, "Take or upload a photo of the image on the screen or the paper.")
    if photo is None:
        return
    show_physical_report(physical_report(model, picture, delta, photo, scale=scale))
