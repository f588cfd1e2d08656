"""Downloads and tables made from the core's per-image report (``uap_core.report``): label flips, the
predictions as CSV, the perturbed images as a zip. Plain Python (no Streamlit); all measuring is in the core.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter

import numpy as np
import torch
from PIL import Image

from uap_core.images import ImageSet
from uap_core.report import PerturbationReport, perturbed_pixels


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 tensor → PIL image."""
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))


def label_flips(report: PerturbationReport) -> list[dict]:
    """How often each clean label turned into each perturbed label (fooled images only), most frequent first."""
    counts = Counter((p.clean_name, p.perturbed_name) for p in report.predictions if p.fooled)
    return [{"clean label": a, "perturbed label": b, "images": n} for (a, b), n in counts.most_common()]


def predictions_csv(report: PerturbationReport) -> bytes:
    """One row per image: name, true label, clean/perturbed label, name and confidence, fooled."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "true_label", "clean_label", "clean_name", "clean_confidence", "perturbed_label",
                     "perturbed_name", "perturbed_confidence", "fooled", "strength"])
    for p in report.predictions:
        writer.writerow([p.name, p.true_label if p.true_label >= 0 else "", p.clean_label, p.clean_name,
                         f"{p.clean_confidence:.4f}", p.perturbed_label, p.perturbed_name,
                         f"{p.perturbed_confidence:.4f}", int(p.fooled), f"{report.scale:g}"])
    return buffer.getvalue().encode("utf-8")


def perturbed_zip(images: ImageSet, delta: torch.Tensor) -> bytes:
    """A zip of the perturbed images as PNG files (lossless, so the perturbation survives)."""
    pictures = perturbed_pixels(images.pixels, delta)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, picture in enumerate(pictures):
            stem = images.names[i].replace("/", "_").rsplit(".", 1)[0] or f"image_{i}"
            png = io.BytesIO()
            to_pil(picture).save(png, format="PNG")
            archive.writestr(f"{i:04d}_{stem}.png", png.getvalue())
    return buffer.getvalue()
