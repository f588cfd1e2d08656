"""A perturbation on a set of images, image by image: what the model said before and after, how sure it was,
which images were fooled — with the summary measures of :mod:`uap_core.evaluation` and the random baseline.

This is what the CLI's ``evaluate``, the Inspect page and the Home demo's gallery show. Forward-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import metrics
from .artifacts import resample_delta
from .evaluation import Evaluation, predict_labels, predict_logits, predict_top1, summarise
from .images import ImageSet
from .models import Classifier


@dataclass
class ImagePrediction:
    """One image, clean and perturbed. Labels are class indices; confidences are softmax probabilities."""

    index: int
    name: str
    clean_label: int
    clean_name: str
    clean_confidence: float
    perturbed_label: int
    perturbed_name: str
    perturbed_confidence: float
    true_label: int  # -1 where unknown

    @property
    def fooled(self) -> bool:
        return self.clean_label != self.perturbed_label


@dataclass
class PerturbationReport:
    """``scale`` · δ on a set of images.

    evaluation: fooling ratio, accuracies, dominant-label histograms (see :class:`Evaluation`).
    random_fooling_ratio: the same images under random noise of δ's norm (L∞: uniform signs ±max|δ|;
        L2: a random direction of length ‖δ‖₂), drawn from ``seed``.
    delta: (3, H, W) float CPU, the scaled δ at the images' size. resized_from: δ's own (H, W) if resampled.
    """

    scale: float
    evaluation: Evaluation
    random_fooling_ratio: float
    predictions: list[ImagePrediction]
    delta: torch.Tensor
    resized_from: tuple[int, int] | None

    @property
    def count(self) -> int:
        return self.evaluation.count

    @property
    def fooling_ratio(self) -> float:
        return self.evaluation.fooling_ratio

    @property
    def fooled_count(self) -> int:
        return sum(p.fooled for p in self.predictions)

    def as_dict(self, top: int = 20) -> dict:
        return {**self.evaluation.as_dict(top), **self.evaluation.fooling_rate_fields(),
                "random_fooling_ratio": self.random_fooling_ratio,
                "scale": self.scale, "resized_from": list(self.resized_from) if self.resized_from else None}


def perturbation_report(model: Classifier, images: ImageSet, delta: torch.Tensor, scale: float = 1.0,
                        norm: str = "linf", target: int | None = None, clean_logits: torch.Tensor | None = None,
                        seed: int = 0, precision: str = "fp32") -> PerturbationReport:
    """Predict ``images`` clean and with clamp(x + scale·δ, 0, 1).

    delta: (3, H, W) pixel units, resampled to the images' size when it differs (bilinear).
    norm: the norm of the random baseline ("linf" or "l2"). clean_logits: (N, C) if already computed.
    """
    device = model.device
    size = tuple(images.pixels.shape[2:])
    original = tuple(delta.shape[1:])
    scaled = resample_delta(delta.detach().float().cpu(), size) * float(scale)
    pixels = images.pixels.to(device)
    if clean_logits is None:
        clean_logits = predict_logits(model, pixels, None, precision)
    clean_confidence, clean_labels = clean_logits.float().softmax(1).max(1)
    perturbed_labels, perturbed_confidence = predict_top1(model, pixels, scaled.to(device), precision)
    evaluation = summarise(clean_labels, perturbed_labels, images.labels, model.spec.class_names, target,
                           clean_confidence, perturbed_confidence)

    size_of_delta = float(scaled.abs().max() if norm == "linf" else scaled.norm())
    if size_of_delta > 0:
        generator = torch.Generator().manual_seed(seed)
        noise = metrics.random_perturbation(tuple(scaled.shape), size_of_delta, norm, generator, device)
        random_labels = predict_labels(model, pixels, noise, precision)
        random_fooling_ratio = metrics.fooling_ratio(clean_labels, random_labels)
    else:
        random_fooling_ratio = 0.0
    return report_from_evaluation(evaluation, images, scaled, random_fooling_ratio, model.spec.class_names,
                                  float(scale), original if original != size else None, target)


def report_from_evaluation(evaluation: Evaluation, images: ImageSet, delta: torch.Tensor,
                           random_fooling_ratio: float, class_names: tuple[str, ...] | list[str],
                           scale: float = 1.0, resized_from: tuple[int, int] | None = None,
                           target: int | None = None) -> PerturbationReport:
    """The report of an evaluation already made (with its top-1 probabilities), no forward pass: e.g. a run's
    final held-out evaluation. ``images`` are the first len(images) evaluated images; the report covers them."""
    count = len(images)
    if evaluation.clean_confidence is None or evaluation.perturbed_confidence is None:
        raise ValueError("the evaluation has no top-1 probabilities (made by evaluate() or perturbation_report())")
    if count > evaluation.count:
        raise ValueError(f"{count} images but the evaluation covers {evaluation.count}")
    clean_labels, perturbed_labels = evaluation.clean_labels[:count], evaluation.perturbed_labels[:count]
    clean_confidence = evaluation.clean_confidence[:count]
    perturbed_confidence = evaluation.perturbed_confidence[:count]
    if count < evaluation.count:
        evaluation = summarise(clean_labels, perturbed_labels, images.labels, class_names, target, clean_confidence,
                               perturbed_confidence)
    truth = images.labels.cpu()
    predictions = [
        ImagePrediction(i, images.names[i], int(cl), class_names[int(cl)], float(cc), int(pl), class_names[int(pl)],
                        float(pc), int(truth[i]))
        for i, (cl, cc, pl, pc) in enumerate(zip(clean_labels.tolist(), clean_confidence.tolist(),
                                                 perturbed_labels.tolist(), perturbed_confidence.tolist()))
    ]
    return PerturbationReport(float(scale), evaluation, random_fooling_ratio, predictions, delta.detach().float().cpu(),
                              resized_from)


def perturbed_pixels(pixels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pictures of clamp(x + δ, 0, 1), for display and download (rounded to 1/255)."""
    x = pixels.float().div(255) + delta.to(pixels.device)
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


@dataclass
class TopLabels:
    """The k most probable classes of one image, most probable first. confidences: softmax probabilities."""

    labels: list[int]
    names: list[str]
    confidences: list[float]

    def rows(self) -> list[dict]:
        return [{"rank": i + 1, "label": n, "confidence": c}
                for i, (n, c) in enumerate(zip(self.names, self.confidences))]


@dataclass
class PhotoReport:
    """One photo under a perturbation: what the model says before and after.

    clean / perturbed: (3, H, W) uint8 pictures — the perturbed one is clamp(x + scale·δ, 0, 1) rounded to
    1/255, exactly the picture shown and offered for download, and the one classified (so the top-5 is what the
    model says of that very file). delta: the scaled (3, H, W) float δ at the photo's size.
    """

    clean: torch.Tensor
    perturbed: torch.Tensor
    delta: torch.Tensor
    clean_top: TopLabels
    perturbed_top: TopLabels

    @property
    def flipped(self) -> bool:
        """True when the top-1 label changed."""
        return self.clean_top.labels[0] != self.perturbed_top.labels[0]


def _top_labels(logits: torch.Tensor, class_names: tuple[str, ...] | list[str], k: int) -> TopLabels:
    probabilities = logits.float().softmax(-1)
    values, indices = probabilities.topk(min(k, probabilities.shape[-1]))
    labels = [int(i) for i in indices.tolist()]
    return TopLabels(labels, [class_names[i] for i in labels], [float(v) for v in values.tolist()])


def photo_report(model: Classifier, picture: torch.Tensor, delta: torch.Tensor, scale: float = 1.0,
                 k: int = 5) -> PhotoReport:
    """The top-``k`` labels of one photo, clean and with ``scale``·δ added.

    picture: (3, H, W) uint8 at the model's input size (see :func:`uap_core.images.decode_image`).
    delta: (3, h, w) pixel units; resampled to H×W when it differs (bilinear).
    """
    if picture.dim() != 3 or picture.dtype != torch.uint8:
        raise ValueError(f"expected a (3, H, W) uint8 picture, got {tuple(picture.shape)} {picture.dtype}")
    size = tuple(picture.shape[1:])
    scaled = resample_delta(delta.detach().float().cpu(), size) * float(scale)
    clean = picture.cpu()
    perturbed = perturbed_pixels(clean[None], scaled)[0]
    batch = torch.stack([clean, perturbed]).to(model.device)
    logits = predict_logits(model, batch, None, "fp32").cpu()
    names = model.spec.class_names
    return PhotoReport(clean, perturbed, scaled, _top_labels(logits[0], names, k), _top_labels(logits[1], names, k))
