"""Evaluate saved perturbations on models: one UAP (``evaluate``) or the black-box table (``transfer``).

A UAP made for one input size is resampled to another model's size (bilinear; this never raises the L∞ norm),
and the fooling ratio is measured forward-only on the same images for every model.

Both can stream the images from disk (an :class:`~uap_core.images.ImageStream`: decoded batch by batch in
DataLoader workers, one pass for all perturbations) and, under torchrun, share the batches among the ranks and
gather the per-image results; either way the counts are those of the in-memory, one-process evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import distributed, metrics
from .artifacts import UAPArtifact, resample_delta
from .evaluation import evaluate, predict_many, summarise
from .images import ImageSet, ImageStream, SkippedImage, load_images, model_geometry, open_stream, should_stream
from .models import Classifier, load_model, resolve_device
from .report import PerturbationReport, perturbation_report, report_from_evaluation
from .run_setup import choose_precision


def images_for(model: Classifier, source: str, limit: int | None = None, input_size: int | None = None,
               stream: bool = False) -> ImageSet | ImageStream:
    """Decode ``source`` at the model's input size and resize policy (stream: only list it, see
    :class:`ImageStream`)."""
    spec = model.spec
    size, resize = model_geometry(spec.input_size, spec.resize_size, input_size)
    load = open_stream if stream else load_images
    return load(source, size, resize, list(spec.class_names), limit=limit)


def evaluate_uap(artifact: UAPArtifact, model: Classifier, images: ImageSet | ImageStream, precision: str = "auto",
                 seed: int = 0, scale: float = 1.0, clean_logits: torch.Tensor | None = None,
                 workers: int | None = None) -> PerturbationReport:
    """Fooling ratio, accuracies, dominant labels and per-image predictions of ``scale`` · δ on ``images``,
    with the random baseline of δ's own norm (from the artifact's metadata; L∞ when unknown).
    clean_logits: (N, C) logits of the clean images if already computed (in memory, one process only).
    A stream (``workers`` DataLoader processes), or a multi-process run, goes through :func:`streamed_report`."""
    metadata = artifact.metadata if isinstance(artifact.metadata, dict) else {}
    norm = metadata.get("norm") if metadata.get("norm") in ("linf", "l2") else "linf"
    target = metadata.get("target") if isinstance(metadata.get("target"), int) else None
    if isinstance(images, ImageStream) or distributed.is_active():
        return streamed_report(model, images, artifact.delta, scale=scale, norm=norm, target=target, seed=seed,
                               precision=choose_precision(precision, model.device), workers=workers)
    return perturbation_report(model, images, artifact.delta, scale=scale, norm=norm, target=target, seed=seed, clean_logits=clean_logits,
                               precision=choose_precision(precision, model.device))


def streamed_report(model: Classifier, images: ImageSet | ImageStream, delta: torch.Tensor, scale: float = 1.0,
                    norm: str = "linf", target: int | None = None, seed: int = 0, precision: str = "fp32",
                    workers: int | None = None) -> PerturbationReport:
    """:func:`~uap_core.report.perturbation_report` in one pass over the images — each batch forwarded clean,
    with clamp(x + scale·δ) and with the random baseline — shared among the ranks of a multi-process run.

    The same numbers as ``perturbation_report`` on the same images (the same batches, the same three forwards);
    the report lists the images (names, labels) without keeping their pixels. A streamed file that cannot be
    decoded is left out (and listed in ``skipped`` of the report's images).
    """
    size = (images.size, images.size) if isinstance(images, ImageStream) else tuple(images.pixels.shape[2:])
    original = tuple(delta.shape[1:])
    scaled = resample_delta(delta.detach().float().cpu(), size) * float(scale)
    size_of_delta = float(scaled.abs().max() if norm == "linf" else scaled.norm())
    noise = None
    if size_of_delta > 0:
        generator = torch.Generator().manual_seed(seed)
        noise = metrics.random_perturbation(tuple(scaled.shape), size_of_delta, norm, generator, "cpu")
    source = images if isinstance(images, ImageStream) else images.pixels
    found = predict_many(model, source, [None, scaled] + ([noise] if noise is not None else []), precision,
                         across_ranks=True, workers=workers)
    names, truth = images.names, images.labels
    kept = found.valid.nonzero().flatten().tolist()
    if len(kept) < len(names):
        names = [names[i] for i in kept]
    truth = found.truth if isinstance(images, ImageStream) else truth
    evaluation = summarise(found.labels[0], found.labels[1], truth, model.spec.class_names, target,
                           found.confidence[0], found.confidence[1])
    random_fooling_ratio = metrics.fooling_ratio(found.labels[0], found.argmax[2]) if noise is not None else 0.0
    skipped = [] if len(kept) == len(found.valid) else [
        SkippedImage(images.names[i], "cannot be decoded") for i in (~found.valid).nonzero().flatten().tolist()]
    listed = ImageSet.without_pixels(truth, names, f"{getattr(images, 'source', '')}", skipped)
    return report_from_evaluation(evaluation, listed, scaled, random_fooling_ratio, model.spec.class_names,
                                  float(scale), original if original != size else None, target)


@dataclass
class TransferMatrix:
    """fooling_ratio[i][j]: UAP i on model j (None where the model could not be loaded: see errors).
    noise: the baseline rows, "random ±8/255 noise" (one per distinct budget of the UAPs) → per model the fooling
    ratio of random noise of that norm and size (:func:`uap_core.metrics.random_perturbation`); empty unless
    asked for.
    fooling_rate[i][j]: 1 − top-1 accuracy of model j under UAP i against the true labels, over the
    ``labelled_count`` labelled images (None where no image has a true label, or the model is missing)."""

    uap_names: list[str]
    model_names: list[str]
    fooling_ratio: list[list[float | None]]
    errors: dict[str, str]
    image_count: int
    noise: dict[str, list[float | None]] = field(default_factory=dict)
    fooling_rate: list[list[float | None]] | None = None
    labelled_count: int = 0

    def as_dict(self) -> dict:
        rates = {"fooling_rate": self.fooling_rate, "labelled_images": self.labelled_count} if self.labelled_count \
            else {"fooling_rate": None, "fooling_rate_reason": "no true labels for these images"}
        found = {"uaps": self.uap_names, "models": self.model_names, "fooling_ratio": self.fooling_ratio, **rates,
                 "errors": self.errors, "images": self.image_count}
        return {**found, "random_noise": self.noise} if self.noise else found

    def table(self) -> str:
        """The matrix as text: a column per model as wide as its name (at least a number's), a row per UAP, then
        the random-noise rows."""
        rows_in = [*zip(self.uap_names, self.fooling_ratio), *self.noise.items()]
        width = max([len(name) for name, _ in rows_in] + [8])
        widths = [max(len(m), 6) for m in self.model_names]
        rows = [" " * width + "".join(f"  {m:>{w}}" for m, w in zip(self.model_names, widths))]
        for name, row in rows_in:
            cells = "".join(f"  {'—' if v is None else f'{v:.3f}':>{w}}" for v, w in zip(row, widths))
            rows.append(f"{name:<{width}}{cells}")
        return "\n".join(rows)


def noise_budgets(uaps: dict[str, UAPArtifact]) -> dict[str, tuple[str, str]]:
    """One random-noise baseline per distinct budget of ``uaps``: its row label ("random ±8/255 noise", "random
    L2 1.5 noise") → (the first UAP of that budget, its norm). The budget is the norm the metadata names (L∞ when
    none) at δ's own size: ‖δ‖∞ or ‖δ‖₂."""
    found: dict[str, tuple[str, str]] = {}
    for name, artifact in uaps.items():
        metadata = artifact.metadata if isinstance(artifact.metadata, dict) else {}
        norm = metadata.get("norm") if metadata.get("norm") in ("linf", "l2") else "linf"
        delta = artifact.delta.detach().float()
        if norm == "linf":
            size = float(delta.abs().max()) * 255
            text = f"±{round(size)}/255" if abs(size - round(size)) < 0.05 else f"±{size:.1f}/255"
        else:
            text = f"L2 {float(delta.norm()):.3g}"
        found.setdefault(f"random {text} noise", (name, norm))
    return found


def _noise_like(artifact: UAPArtifact, norm: str, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Seeded random noise (3, *size) of ``artifact``'s budget: ±‖δ‖∞ of δ as saved under L∞ (the row's label,
    whatever the input size), under L2 the ‖·‖₂ of δ resampled to ``size`` (what the UAP brings to that model)."""
    delta = artifact.delta.detach().float().cpu()
    budget = float(delta.abs().max()) if norm == "linf" else float(resample_delta(delta, size).norm())
    return metrics.random_perturbation((3, *size), budget, norm, torch.Generator().manual_seed(seed), "cpu")


def transfer_matrix(uaps: dict[str, UAPArtifact], model_names: list[str], images: str | ImageSet, device: str = "auto",
                    limit: int | None = None, precision: str = "auto",
                    models: dict[str, Classifier] | None = None, stream: str = "off",
                    workers: int | None = None, noise: bool = False) -> TransferMatrix:
    """The black-box table: the held-out fooling ratio of every UAP on every model, forward-only.

    uaps: name → artifact; images: an image source (see images.load_images), decoded once per model size — or
    an :class:`ImageSet` already decoded (used as it is for every model, ``limit`` ignored; in one process).
    A model that cannot be loaded (no weights offline, …) gets a row of None and an entry in ``errors``.
    stream: "on" / "off" / "auto" (see :func:`~uap_core.images.should_stream`): read the images from disk in one
    pass per model (all UAPs on each batch) through ``workers`` DataLoader processes. Under torchrun the batches
    are shared among the ranks (streamed or not) and the per-image labels gathered.
    noise: also measure random noise of each distinct budget of the UAPs (:func:`noise_budgets`) on every model
    (seed 0, at the model's input size): the rows to judge the others against.
    """
    decoded = images if isinstance(images, ImageSet) else None  # already decoded (e.g. a study's held-out set)
    streaming = decoded is None and should_stream(stream, images)
    from .errors import UAPError

    resolved = distributed.local_device(resolve_device(device))
    values: list[list[float | None]] = [[None] * len(model_names) for _ in uaps]
    budgets = noise_budgets(uaps) if noise else {}
    noise_values: dict[str, list[float | None]] = {label: [None] * len(model_names) for label in budgets}
    rates: list[list[float | None]] = [[None] * len(model_names) for _ in uaps]
    errors: dict[str, str] = {}
    count = labelled = 0
    for column, name in enumerate(model_names):
        try:
            model = (models or {}).get(name) or load_model(name, resolved)
        except UAPError as exc:
            errors[name] = str(exc)
            continue
        chosen = choose_precision(precision, resolved)
        if streaming or distributed.is_active():
            image_set = images_for(model, images, limit, stream=streaming)
            source = image_set if streaming else image_set.pixels
            size = (image_set.size,) * 2 if streaming else tuple(image_set.pixels.shape[2:])
            deltas = [resample_delta(artifact.delta, size) for artifact in uaps.values()]
            noises = [_noise_like(uaps[name], norm, size) for name, norm in budgets.values()]
            found = predict_many(model, source, [None] + deltas + noises, chosen, across_ranks=True,
                                 workers=workers)
            count = found.count
            truth = found.truth if streaming else image_set.labels
            labelled = int((truth >= 0).sum())
            for row in range(len(deltas)):
                values[row][column] = metrics.fooling_ratio(found.labels[0], found.labels[row + 1])
                accuracy = metrics.accuracy(found.labels[row + 1], truth)
                rates[row][column] = None if accuracy is None else 1.0 - accuracy
            for k, label in enumerate(budgets):
                noise_values[label][column] = metrics.fooling_ratio(found.labels[0],
                                                                    found.labels[len(deltas) + 1 + k])
            continue
        image_set = decoded if decoded is not None else images_for(model, images, limit)
        count = len(image_set)
        pixels = image_set.pixels.to(resolved)
        clean = evaluate(model, pixels, None, precision=chosen).perturbed_labels.to(resolved)
        for row, artifact in enumerate(uaps.values()):
            delta = resample_delta(artifact.delta, tuple(pixels.shape[2:])).to(resolved)
            found = evaluate(model, pixels, delta, image_set.labels, clean_labels=clean, precision=chosen)
            values[row][column], rates[row][column] = found.fooling_ratio, found.fooling_rate
            labelled = found.labelled
        for label, (name, norm) in budgets.items():
            delta = _noise_like(uaps[name], norm, tuple(pixels.shape[2:])).to(resolved)
            noise_values[label][column] = evaluate(model, pixels, delta, clean_labels=clean,
                                                   precision=chosen).fooling_ratio
    return TransferMatrix(list(uaps), list(model_names), values, errors, count, noise_values, rates, labelled)
