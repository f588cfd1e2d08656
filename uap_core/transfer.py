"""Evaluate saved perturbations on models: one UAP (``evaluate``) or the black-box table (``transfer``).

A UAP made for one input size is resampled to another model's size (bilinear; this never raises the L∞ norm),
and the fooling ratio is measured forward-only on the same images for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import metrics
from .artifacts import UAPArtifact
from .evaluation import Evaluation, evaluate
from .images import ImageSet, load_images
from .models import Classifier, load_model, resolve_device
from .run import choose_precision


def images_for(model: Classifier, source: str, limit: int | None = None, input_size: int | None = None) -> ImageSet:
    """Decode ``source`` at the model's input size and resize policy."""
    spec = model.spec
    size = input_size or spec.input_size
    return load_images(source, size, round(size * spec.resize_size / spec.input_size), list(spec.class_names),
                       limit=limit)


def fit_to(delta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """δ (3, H, W) resampled to ``size`` = (h, w) if it differs (bilinear, antialiased when shrinking)."""
    if tuple(delta.shape[1:]) == tuple(size):
        return delta
    shrinking = size[0] < delta.shape[1]
    return torch.nn.functional.interpolate(delta[None], size=size, mode="bilinear", align_corners=False,
                                           antialias=shrinking)[0]


@dataclass
class UAPEvaluation:
    evaluation: Evaluation
    random_fooling_ratio: float
    resized_from: tuple[int, int] | None

    def as_dict(self) -> dict:
        return {**self.evaluation.as_dict(), "random_fooling_ratio": self.random_fooling_ratio,
                "resized_from": list(self.resized_from) if self.resized_from else None}


def evaluate_uap(artifact: UAPArtifact, model: Classifier, images: ImageSet, precision: str = "auto",
                 seed: int = 0, scale: float = 1.0) -> UAPEvaluation:
    """Fooling ratio, accuracies and dominant labels of ``scale`` · δ on ``images``, with the random baseline
    (noise of the same L∞ norm as δ, i.e. uniform signs ±max|δ|)."""
    device = model.device
    precision = choose_precision(precision, device)
    size = tuple(images.pixels.shape[2:])
    original = tuple(artifact.delta.shape[1:])
    delta = fit_to(artifact.delta, size).to(device) * scale
    pixels = images.pixels.to(device)
    result = evaluate(model, pixels, delta, images.labels, precision=precision,
                      target=artifact.metadata.get("target") if isinstance(artifact.metadata, dict) else None)
    generator = torch.Generator().manual_seed(seed)
    noise = metrics.random_perturbation(delta.shape, max(delta.abs().max().item(), 1e-12), "linf", generator, device)
    random_result = evaluate(model, pixels, noise, clean_labels=result.clean_labels.to(device), precision=precision)
    return UAPEvaluation(result, random_result.fooling_ratio, original if original != size else None)


@dataclass
class TransferMatrix:
    """fooling_ratio[i][j]: UAP i on model j (None where the model could not be loaded: see errors)."""

    uap_names: list[str]
    model_names: list[str]
    fooling_ratio: list[list[float | None]]
    errors: dict[str, str]
    image_count: int

    def as_dict(self) -> dict:
        return {"uaps": self.uap_names, "models": self.model_names, "fooling_ratio": self.fooling_ratio,
                "errors": self.errors, "images": self.image_count}

    def table(self) -> str:
        width = max([len(n) for n in self.uap_names] + [8])
        head = " " * width + "".join(f" {m[:14]:>14}" for m in self.model_names)
        rows = [head]
        for name, row in zip(self.uap_names, self.fooling_ratio):
            cells = "".join(f" {'—' if v is None else f'{v:.3f}':>14}" for v in row)
            rows.append(f"{name:<{width}}{cells}")
        return "\n".join(rows)


def transfer_matrix(uaps: dict[str, UAPArtifact], model_names: list[str], images: str, device: str = "auto",
                    limit: int | None = None, precision: str = "auto",
                    models: dict[str, Classifier] | None = None) -> TransferMatrix:
    """The black-box table: the held-out fooling ratio of every UAP on every model, forward-only.

    uaps: name → artifact; images: an image source (see images.load_images), decoded once per model size.
    A model that cannot be loaded (no weights offline, …) gets a row of None and an entry in ``errors``.
    """
    from .errors import UAPError

    resolved = resolve_device(device)
    values: list[list[float | None]] = [[None] * len(model_names) for _ in uaps]
    errors: dict[str, str] = {}
    count = 0
    for column, name in enumerate(model_names):
        try:
            model = (models or {}).get(name) or load_model(name, resolved)
        except UAPError as exc:
            errors[name] = str(exc)
            continue
        image_set = images_for(model, images, limit)
        count = len(image_set)
        pixels = image_set.pixels.to(resolved)
        chosen = choose_precision(precision, resolved)
        clean = evaluate(model, pixels, None, precision=chosen).perturbed_labels.to(resolved)
        for row, artifact in enumerate(uaps.values()):
            delta = fit_to(artifact.delta, tuple(pixels.shape[2:])).to(resolved)
            values[row][column] = evaluate(model, pixels, delta, clean_labels=clean, precision=chosen).fooling_ratio
    return TransferMatrix(list(uaps), list(model_names), values, errors, count)
