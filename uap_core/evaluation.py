"""Forward-only evaluation of a perturbation: predictions, fooling ratio, accuracy, dominant labels.

Everything here runs without gradients (torch.inference_mode) in large batches, backing off on out-of-memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from . import metrics
from .models import Classifier


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision: "fp32" (none), "bf16" or "fp16" (model math only)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 32


def predict_logits(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, C) fp32 of clamp(pixels / 255 + δ, 0, 1), on the model's device.

    pixels: (N, 3, H, W) uint8 (any device); delta: (3, H, W) pixel units or None for the clean images.
    Halves the batch on CUDA out-of-memory and goes on.
    """
    device = model.device
    batch = batch_size or default_batch_size(device)
    outputs, start = [], 0
    with torch.inference_mode():
        while start < len(pixels):
            chunk = pixels[start:start + batch].to(device, non_blocking=True)
            try:
                x = chunk.float().div_(255)
                if delta is not None:
                    x = (x + delta.to(device)).clamp_(0, 1)
                with autocast(device, precision):
                    outputs.append(model(x.contiguous(memory_format=torch.channels_last)).float())
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch = max(1, batch // 2)
                torch.cuda.empty_cache()
                continue
            start += len(chunk)
    return torch.cat(outputs) if outputs else torch.empty((0, model.spec.num_classes), device=device)


def predict_labels(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Top-1 labels (N,) int64 on the model's device; see :func:`predict_logits`."""
    return predict_logits(model, pixels, delta, precision, batch_size).argmax(1)


@dataclass
class Evaluation:
    """A perturbation measured on a set of images (held-out unless said otherwise)."""

    count: int
    fooling_ratio: float
    clean_accuracy: float | None
    attacked_accuracy: float | None
    target_success: float | None
    histogram: metrics.LabelHistogram  # over all perturbed images
    histogram_fooled: metrics.LabelHistogram  # over the fooled images only
    clean_labels: torch.Tensor = field(repr=False)  # (N,) CPU
    perturbed_labels: torch.Tensor = field(repr=False)  # (N,) CPU

    def as_dict(self, top: int = 20) -> dict:
        dominant = self.histogram.dominant
        return {
            "count": self.count, "fooling_ratio": self.fooling_ratio, "clean_accuracy": self.clean_accuracy,
            "attacked_accuracy": self.attacked_accuracy, "target_success": self.target_success,
            "dominant_label": dominant.label if dominant else None,
            "dominant_name": dominant.name if dominant else None,
            "dominant_share": dominant.share if dominant else 0.0,
            "histogram": self.histogram.as_dict(top), "histogram_fooled": self.histogram_fooled.as_dict(top),
        }


def evaluate(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None, labels: torch.Tensor | None = None,
             clean_labels: torch.Tensor | None = None, target: int | None = None, precision: str = "fp32",
             batch_size: int | None = None) -> Evaluation:
    """Fooling ratio, accuracies and dominant-label histograms of δ on ``pixels`` (N, 3, H, W) uint8.

    labels: ground truth (N,) with -1 where unknown (accuracies only where known). clean_labels: k(x) if already
    computed (saves a forward pass). target: report the share predicted as the target class too.
    """
    if clean_labels is None:
        clean_labels = predict_labels(model, pixels, None, precision, batch_size)
    perturbed = predict_labels(model, pixels, delta, precision, batch_size)
    return summarise(clean_labels, perturbed, labels, model.spec.class_names, target)


def summarise(clean_labels: torch.Tensor, perturbed_labels: torch.Tensor, labels: torch.Tensor | None,
              class_names: tuple[str, ...] | list[str], target: int | None = None) -> Evaluation:
    """The :class:`Evaluation` of already-predicted top-1 labels (N,) clean and perturbed; labels as above."""
    clean_labels, perturbed = clean_labels.cpu(), perturbed_labels.cpu()
    truth = labels.cpu() if labels is not None else torch.full_like(clean_labels, -1)
    return Evaluation(
        count=len(clean_labels),
        fooling_ratio=metrics.fooling_ratio(clean_labels, perturbed),
        clean_accuracy=metrics.accuracy(clean_labels, truth),
        attacked_accuracy=metrics.accuracy(perturbed, truth),
        target_success=(perturbed == target).float().mean().item() if target is not None else None,
        histogram=metrics.dominant_labels(perturbed, class_names),
        histogram_fooled=metrics.dominant_labels(perturbed, class_names, clean_labels),
        clean_labels=clean_labels, perturbed_labels=perturbed,
    )
