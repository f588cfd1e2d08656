"""A UAP measured under real transformations: the held-out fooling ratio of δ when the perturbed image is JPEG
re-encoded, rotated, scaled, blurred or brightened by the real operations (libjpeg through Pillow,
``torchvision.transforms.functional``), not the differentiable approximations a robust run is fitted through
(:mod:`uap_core.transforms`).

Which clean label the transformed perturbed image is compared with
    The perturbed image is p = clamp(x + δ, 0, 1) and the transformation τ is applied to p, as the world does (a
    δ printed or shown on a screen is photographed, a saved image is re-compressed). Its label k(τ(p)) is compared
    with the label of the **transformed clean image** k(τ(x)): δ counts as fooling an image when it changes the
    label the model gives that image *under the same transformation*. So the measure is what δ adds, and a
    transformation that by itself changes a label (a rotated CIFAR image the model no longer recognises, a JPEG at
    quality 30) is not credited to δ; at strength "none" it is exactly the plain fooling ratio.

    Xu & Singh (Towards robust universal adversarial perturbations, ICML 2024) ask whether the perturbed image stays
    misclassified under the transformation; in their definition, as we read it, the reference is the original
    image's label (the untransformed clean image's, or its true label) — the stored corpus did not hold their text
    to check the exact wording. That number, k(τ(p)) ≠ k(x), is reported beside ours as ``fooling_ratio_vs_clean``,
    together with ``transform_alone``, the share of images whose label τ changes without any δ (k(τ(x)) ≠ k(x)):
    the gap between the two is mostly that share.

Every transformation here is deterministic at a given strength (rotation by exactly θ degrees, not a random angle),
the same τ for the clean and the perturbed image. Strength units: ``jpeg`` quality 1…100 (the perturbed and clean
images are rounded to 8 bits first, as a saved image is); ``rotation`` degrees counter-clockwise (bilinear, black
corners); ``scale`` factor about the centre (bilinear; < 1 leaves a black border, > 1 crops); ``blur`` Gaussian σ
in pixels of the model's input (kernel 2·⌈3σ⌉ + 1, reflect padding; 0: none); ``brightness`` factor (clamped).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from .evaluation import autocast, default_batch_size
from .models import Classifier

REAL_TRANSFORMS = ("jpeg", "rotation", "scale", "blur", "brightness")
# the strength at which each transformation leaves an image as it is (jpeg: none is applied at quality 100)
IDENTITY = {"jpeg": 100, "rotation": 0.0, "scale": 1.0, "blur": 0.0, "brightness": 1.0}


def real_transform(x: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    """x (B, 3, H, W) float in [0, 1] → the real transformation ``kind`` at ``strength`` (units: module docstring),
    (B, 3, H, W) float in [0, 1] on x's device. jpeg at quality 100 and every identity strength return x."""
    if kind not in REAL_TRANSFORMS:
        raise ValueError(f"unknown transformation {kind!r}; one of {', '.join(REAL_TRANSFORMS)}")
    if strength == IDENTITY[kind]:
        return x
    if kind == "jpeg":
        pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        return torch.stack([jpeg_roundtrip(image, int(strength)) for image in pixels]).to(x.device).float().div_(255)
    if kind == "rotation":
        return TF.rotate(x, float(strength), interpolation=TF.InterpolationMode.BILINEAR)
    if kind == "scale":
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=float(strength), shear=[0.0, 0.0],
                         interpolation=TF.InterpolationMode.BILINEAR)
    if kind == "blur":
        size = 2 * math.ceil(3 * float(strength)) + 1
        return TF.gaussian_blur(x, [size, size], [float(strength), float(strength)])
    return TF.adjust_brightness(x, float(strength))


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """(3, H, W) uint8 → encoded as JPEG at ``quality`` by Pillow (libjpeg: 4:2:0, the standard tables scaled by
    quality — the same bytes as ``torchvision.io.encode_jpeg``, whose codec is deprecated) and decoded, (3, H, W)
    uint8."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1)


@dataclass
class TransformedFooling:
    """δ under one transformation at one strength, on ``count`` held-out images. fooling_ratio: share with
    k(τ(clamp(x + δ))) ≠ k(τ(x)) (what δ adds under τ); fooling_ratio_vs_clean: share with k(τ(clamp(x + δ))) ≠ k(x);
    transform_alone: share with k(τ(x)) ≠ k(x) (τ without δ)."""

    kind: str
    strength: float
    fooling_ratio: float
    fooling_ratio_vs_clean: float
    transform_alone: float
    count: int


def labels_under(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor | None, kind: str, strength: float,
                 precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Top-1 labels (N,) int64 on the CPU of τ(clamp(x + δ, 0, 1)) for ``pixels`` (N, 3, H, W) uint8, δ (3, H, W)
    pixel units or None (the clean images), τ the real transformation ``kind`` at ``strength``."""
    device = model.device
    batch = batch_size or default_batch_size(model, tuple(pixels.shape[1:]), precision)
    shift = None if delta is None else delta.to(device, torch.float32)
    labels = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            x = pixels[start:start + batch].to(device).float().div_(255)
            if shift is not None:
                x = (x + shift).clamp_(0, 1)
            x = real_transform(x, kind, strength)
            with autocast(device, precision):
                labels.append(model(x.contiguous(memory_format=torch.channels_last)).float().argmax(1).cpu())
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.int64)


def compare(kind: str, strength: float, clean: torch.Tensor, clean_transformed: torch.Tensor,
            perturbed_transformed: torch.Tensor) -> TransformedFooling:
    """The three shares of :class:`TransformedFooling` from the labels (N,) k(x), k(τ(x)) and k(τ(clamp(x + δ)))."""
    n = max(len(clean), 1)
    return TransformedFooling(kind, float(strength), (perturbed_transformed != clean_transformed).sum().item() / n,
                              (perturbed_transformed != clean).sum().item() / n,
                              (clean_transformed != clean).sum().item() / n, len(clean))


def fooling_under(model: Classifier, pixels: torch.Tensor, delta: torch.Tensor, kind: str, strength: float,
                  precision: str = "fp32", batch_size: int | None = None) -> TransformedFooling:
    """The held-out fooling ratios of δ (3, H, W) pixel units under the real transformation ``kind`` at
    ``strength``, on ``pixels`` (N, 3, H, W) uint8 (see :class:`TransformedFooling` and the module docstring).
    Three passes over the images: clean, transformed clean, transformed perturbed (a caller measuring several δ
    under one τ computes the first two once: :func:`labels_under`, :func:`compare`)."""
    clean = labels_under(model, pixels, None, kind, IDENTITY[kind], precision, batch_size)
    clean_t = labels_under(model, pixels, None, kind, strength, precision, batch_size)
    return compare(kind, strength, clean, clean_t, labels_under(model, pixels, delta, kind, strength, precision,
                                                                batch_size))


__all__ = ["IDENTITY", "REAL_TRANSFORMS", "TransformedFooling", "compare", "fooling_under", "jpeg_roundtrip",
           "labels_under", "real_transform"]
