"""Per-image views of a perturbation for the pages: predictions with confidences, fooled marks, label flips,
downloads. Plain Python (no Streamlit).

The measurements come from the core (``uap_core.evaluation.predict_logits``, ``uap_core.metrics``,
``uap_core.transfer.fit_to``); this module only arranges them for display (top-1 confidence = softmax of the
core's logits; the perturbed picture = clamp(x + s·δ, 0, 1) as the core defines it).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from uap_core import metrics
from uap_core.evaluation import predict_logits, predict_labels
from uap_core.images import ImageSet
from uap_core.metrics import LabelHistogram
from uap_core.models import Classifier
from uap_core.transfer import fit_to


@dataclass
class ImagePrediction:
    index: int
    name: str
    clean_label: int
    clean_name: str
    clean_confidence: float
    perturbed_label: int
    perturbed_name: str
    perturbed_confidence: float
    true_label: int

    @property
    def fooled(self) -> bool:
        return self.clean_label != self.perturbed_label


@dataclass
class Analysis:
    """δ scaled by ``scale`` on a set of images: per-image predictions and the core's summary measures."""

    scale: float
    fooling_ratio: float
    random_fooling_ratio: float
    histogram: LabelHistogram  # perturbed labels over all images
    histogram_fooled: LabelHistogram  # perturbed labels over the fooled images
    predictions: list[ImagePrediction]
    delta: torch.Tensor  # the scaled δ at the images' size, CPU
    resized_from: tuple[int, int] | None

    @property
    def count(self) -> int:
        return len(self.predictions)

    @property
    def fooled_count(self) -> int:
        return sum(p.fooled for p in self.predictions)


def analyse(model: Classifier, images: ImageSet, delta: torch.Tensor, scale: float = 1.0,
            clean_logits: torch.Tensor | None = None, seed: int = 0) -> Analysis:
    """Predict the images clean and with ``scale``·δ (δ resampled to the images' size if needed)."""
    device = model.device
    size = tuple(images.pixels.shape[2:])
    original = tuple(delta.shape[1:])
    scaled = fit_to(delta.detach().float().cpu(), size) * float(scale)
    pixels = images.pixels.to(device)
    if clean_logits is None:
        clean_logits = predict_logits(model, pixels)
    perturbed_logits = predict_logits(model, pixels, scaled.to(device))
    clean_p = clean_logits.float().softmax(1).cpu()
    pert_p = perturbed_logits.float().softmax(1).cpu()
    clean_conf, clean_labels = clean_p.max(1)
    pert_conf, pert_labels = pert_p.max(1)
    names = model.spec.class_names
    peak = float(scaled.abs().max())
    generator = torch.Generator().manual_seed(seed)
    noise = metrics.random_perturbation(scaled.shape, max(peak, 1e-12), "linf", generator, device)
    random_labels = predict_labels(model, pixels, noise).cpu()
    predictions = [
        ImagePrediction(i, images.names[i], int(cl), names[int(cl)], float(cc), int(pl), names[int(pl)], float(pc),
                        int(images.labels[i]))
        for i, (cl, cc, pl, pc) in enumerate(zip(clean_labels, clean_conf, pert_labels, pert_conf))
    ]
    return Analysis(
        scale=float(scale),
        fooling_ratio=metrics.fooling_ratio(clean_labels, pert_labels),
        random_fooling_ratio=metrics.fooling_ratio(clean_labels, random_labels) if peak > 0 else 0.0,
        histogram=metrics.dominant_labels(pert_labels, names),
        histogram_fooled=metrics.dominant_labels(pert_labels, names, clean_labels),
        predictions=predictions, delta=scaled, resized_from=original if original != size else None)


def perturbed_pixels(pixels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pictures of clamp(x + δ, 0, 1), for display and download."""
    x = pixels.float().div(255) + delta.to(pixels.device)
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 tensor → PIL image."""
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy()))


def label_flips(analysis: Analysis) -> list[dict]:
    """How often each clean label turned into each perturbed label (fooled images only), most frequent first."""
    counts = Counter((p.clean_name, p.perturbed_name) for p in analysis.predictions if p.fooled)
    return [{"clean label": a, "perturbed label": b, "images": n} for (a, b), n in counts.most_common()]


def predictions_csv(analysis: Analysis) -> bytes:
    """One row per image: name, true label, clean/perturbed label, name and confidence, fooled."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "true_label", "clean_label", "clean_name", "clean_confidence", "perturbed_label",
                     "perturbed_name", "perturbed_confidence", "fooled", "strength"])
    for p in analysis.predictions:
        writer.writerow([p.name, p.true_label if p.true_label >= 0 else "", p.clean_label, p.clean_name,
                         f"{p.clean_confidence:.4f}", p.perturbed_label, p.perturbed_name,
                         f"{p.perturbed_confidence:.4f}", int(p.fooled), f"{analysis.scale:g}"])
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
