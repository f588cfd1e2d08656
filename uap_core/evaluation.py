"""Forward-only evaluation of a perturbation: predictions, fooling ratio, accuracy, dominant labels.

Everything here runs without gradients (torch.inference_mode), in batches sized for the device (see
:func:`default_batch_size`), backing off on out-of-memory.
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


CPU_BATCH_PIXELS = 4 * 224 * 224  # pixels per CPU forward: cache-sized batches beat big ones (see below)
CUDA_MEMORY_SHARE = 0.5  # share of the GPU's free memory a forward-only batch may take
MAX_BATCH = 1024
_cuda_batch_cache: dict[tuple, int] = {}


def batch_for_memory(free_bytes: int, bytes_per_image: float, share: float = CUDA_MEMORY_SHARE,
                     largest: int = MAX_BATCH) -> int:
    """Images per batch that fit in ``share`` of ``free_bytes`` at ``bytes_per_image``; 1 ≤ result ≤ largest."""
    return int(max(1, min(largest, share * free_bytes // max(bytes_per_image, 1.0))))


def default_batch_size(model: Classifier, image_shape: tuple[int, ...], precision: str = "fp32") -> int:
    """The forward-only batch for ``model`` on (3, H, W) images.

    CPU: about four 224-pixel images' worth (measured on 2 cores, EfficientNet-Lite0: 32–42 images/s at batch 4,
    27–33 at 8, 24 at 32 — bigger batches fall out of the caches; ResNet50 is flat). CUDA: from the free memory,
    after two probe forwards (4 and 12 images) measure the memory an image takes (cached per model, shape, precision).
    """
    height, width = image_shape[-2:]
    if model.device.type != "cuda":
        return max(1, min(256, CPU_BATCH_PIXELS // (height * width)))
    key = (id(model), tuple(image_shape), precision)
    if key not in _cuda_batch_cache:
        _cuda_batch_cache[key] = _probe_cuda_batch_size(model, tuple(image_shape), precision)
    return _cuda_batch_cache[key]


def _probe_cuda_batch_size(model: Classifier, image_shape: tuple[int, ...], precision: str) -> int:
    """Peak memory of forwards of 4 and of 12 images; the slope is the memory an image takes (without the fixed
    part: weights cast to half precision, workspaces)."""
    device = model.device

    def peak_bytes(count: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), autocast(device, precision):
            x = torch.zeros((count, *image_shape), device=device).contiguous(memory_format=torch.channels_last)
            model(x)
        return torch.cuda.max_memory_allocated(device) - before

    try:
        small, large = peak_bytes(4), peak_bytes(12)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return 1
    per_image = max((large - small) / 8, large / 12 / 4)  # a floor, should the slope come out near zero
    free, _total = torch.cuda.mem_get_info(device)
    return batch_for_memory(free, per_image)


def predict_logits(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, C) fp32 of clamp(pixels / 255 + δ, 0, 1), on the model's device.

    pixels: (N, 3, H, W) uint8 (any device); delta: (3, H, W) pixel units or None for the clean images.
    Halves the batch on CUDA out-of-memory and goes on.
    """
    device = model.device
    batch = batch_size or default_batch_size(model, tuple(pixels.shape[1:]), precision)
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
                if batch_size is None:  # later calls start from the size that fitted
                    _cuda_batch_cache[(id(model), tuple(pixels.shape[1:]), precision)] = batch
                continue
            start += len(chunk)
    return torch.cat(outputs) if outputs else torch.empty((0, model.spec.num_classes), device=device)


def predict_labels(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                   precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Top-1 labels (N,) int64 on the model's device; see :func:`predict_logits`."""
    return predict_logits(model, pixels, delta, precision, batch_size).argmax(1)


def predict_top1(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None = None,
                 precision: str = "fp32", batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 labels (N,) int64 and their softmax probabilities (N,) float32, on the model's device."""
    confidence, labels = predict_logits(model, pixels, delta, precision, batch_size).softmax(1).max(1)
    return labels, confidence


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
    clean_confidence: torch.Tensor | None = field(default=None, repr=False)  # (N,) CPU softmax of the top-1
    perturbed_confidence: torch.Tensor | None = field(default=None, repr=False)  # (N,) CPU, where known

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
             batch_size: int | None = None, clean_confidence: torch.Tensor | None = None) -> Evaluation:
    """Fooling ratio, accuracies and dominant-label histograms of δ on ``pixels`` (N, 3, H, W) uint8.

    labels: ground truth (N,) with -1 where unknown (accuracies only where known). clean_labels (and
    clean_confidence): k(x) and its probability if already computed (saves a forward pass). target: report the
    share predicted as the target class too. The top-1 probabilities come along at no cost.
    """
    if clean_labels is None:
        clean_labels, clean_confidence = predict_top1(model, pixels, None, precision, batch_size)
    perturbed, perturbed_confidence = predict_top1(model, pixels, delta, precision, batch_size)
    return summarise(clean_labels, perturbed, labels, model.spec.class_names, target, clean_confidence,
                     perturbed_confidence)


def summarise(clean_labels: torch.Tensor, perturbed_labels: torch.Tensor, labels: torch.Tensor | None,
              class_names: tuple[str, ...] | list[str], target: int | None = None,
              clean_confidence: torch.Tensor | None = None,
              perturbed_confidence: torch.Tensor | None = None) -> Evaluation:
    """The :class:`Evaluation` of already-predicted top-1 labels (N,) clean and perturbed (and, where known,
    their probabilities (N,)); labels as above."""
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
        clean_confidence=clean_confidence.float().cpu() if clean_confidence is not None else None,
        perturbed_confidence=perturbed_confidence.float().cpu() if perturbed_confidence is not None else None,
    )
