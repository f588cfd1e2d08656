"""Evaluate saved perturbations on models: one UAP (``evaluate``) or the black-box table (``transfer``).

A UAP made for one input size is resampled to another model's size (bilinear; this never raises the L∞ norm),
and the fooling ratio is measured forward-only on the same images for every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .artifacts import UAPArtifact, resample_delta
from .evaluation import evaluate
from .images import ImageSet, load_images
from .models import Classifier, load_model, resolve_device
from .report import PerturbationReport, perturbation_report
from .run import choose_precision


def images_for(model: Classifier, source: str, limit: int | None = None, input_size: int | None = None) -> ImageSet:
    """Decode ``source`` at the model's input size and resize policy."""
    spec = model.spec
    size = input_size or spec.input_size
    return load_images(source, size, round(size * spec.resize_size / spec.input_size), list(spec.class_names),
                       limit=limit)


def evaluate_uap(artifact: UAPArtifact, model: Classifier, images: ImageSet, precision: str = "auto",
                 seed: int = 0, scale: float = 1.0, clean_logits: torch.Tensor | None = None) -> PerturbationReport:
    """Fooling ratio, accuracies, dominant labels and per-image predictions of ``scale`` · δ on ``images``,
    with the random baseline of δ's own norm (from the artifact's metadata; L∞ when unknown).
    clean_logits: (N, C) logits of the clean images if already computed."""
    metadata = artifact.metadata if isinstance(artifact.metadata, dict) else {}
    norm = metadata.get("norm") if metadata.get("norm") in ("linf", "l2") else "linf"
    target = metadata.get("target") if isinstance(metadata.get("target"), int) else None
    return perturbation_report(model, images, artifact.delta, scale=scale, norm=norm, target=target, seed=seed, clean_logits=clean_logits,
                               precision=choose_precision(precision, model.device))


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
            delta = resample_delta(artifact.delta, tuple(pixels.shape[2:])).to(resolved)
            values[row][column] = evaluate(model, pixels, delta, clean_labels=clean, precision=chosen).fooling_ratio
    return TransferMatrix(list(uaps), list(model_names), values, errors, count)
