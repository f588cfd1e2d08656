"""The metrics the papers and the UI name, as plain tensor functions (definitions in docs/algorithms.md).

Conventions: labels are int64 tensors (N,); a perturbation or gradient is any tensor, flattened where a
vector is meant. Functions return Python floats (they synchronise with the device: call them once per step,
not inside an inner loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def fooling_ratio(clean_labels: torch.Tensor, perturbed_labels: torch.Tensor) -> float:
    """Share of images whose top-1 label changes: mean[k(clamp(x + δ)) != k(x)]. Needs no ground truth."""
    if clean_labels.numel() == 0:
        return float("nan")
    return (clean_labels != perturbed_labels).float().mean().item()


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 accuracy over the images whose label is known (label >= 0); None when no label is known."""
    known = labels >= 0
    if not bool(known.any()):
        return None
    return (predicted[known] == labels[known]).float().mean().item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) = <a, b> / (|a| |b|) over all entries, computed in fp32; nan when either vector is zero."""
    a, b = a.flatten().float(), b.flatten().float()
    denominator = a.norm() * b.norm()
    if denominator.item() == 0:
        return float("nan")
    return (a @ b / denominator).item()


def quantisation_error(gradient: torch.Tensor) -> float:
    """How much direction a sign step throws away: QE = 1 - cos(g, sign(g)) = 1 - |g|_1 / (sqrt(d) |g|_2).

    0 when all entries have equal magnitude; approaches 1 - 1/sqrt(d) when one entry dominates.
    """
    g = gradient.flatten().float()
    l2 = g.norm(p=2)
    if l2.item() == 0:
        return float("nan")
    return (1 - g.norm(p=1) / (math.sqrt(g.numel()) * l2)).item()


def budget_use(delta: torch.Tensor, eps: float, norm: str) -> float:
    """How much of the budget δ uses: ‖δ‖₂ against the ‖·‖₂ of the budget's largest perturbation — the ±eps corner
    under L∞ (eps·√d), the sphere under L2 (eps). 1 when every entry sits at ±eps; successive sign steps that
    disagree cancel and keep it low (the SGA paper's "gradient vanishing", made visible)."""
    corner = eps * math.sqrt(delta.numel()) if norm == "linf" else eps
    return (delta.float().norm() / corner).item() if corner > 0 else float("nan")


def sign_flip_rate(gradient: torch.Tensor, previous: torch.Tensor) -> float:
    """Share of entries whose sign differs between two consecutive update gradients."""
    return (torch.sign(gradient) != torch.sign(previous)).float().mean().item()


def saturation(delta: torch.Tensor, eps: float) -> float:
    """Share of δ's entries at the L∞ budget ±eps (within float rounding)."""
    return (delta.abs() >= eps * (1 - 1e-5)).float().mean().item()


def norms(delta: torch.Tensor) -> dict[str, float]:
    """‖δ‖∞ and ‖δ‖₂ in pixel units [0, 1] and in /255 units."""
    linf = delta.abs().max().item()
    l2 = delta.float().norm().item()
    return {"linf": linf, "l2": l2, "linf_255": linf * 255, "l2_255": l2 * 255}


@dataclass(frozen=True)
class LabelCount:
    label: int
    name: str
    count: int
    share: float


@dataclass(frozen=True)
class LabelHistogram:
    """Counts of the perturbed top-1 labels, most frequent first. over: "all" images or only the "fooled" ones."""

    counts: list[LabelCount]
    total: int
    over: str

    @property
    def dominant(self) -> LabelCount | None:
        return self.counts[0] if self.counts else None

    def as_dict(self, top: int | None = 20) -> dict:
        dominant = self.dominant
        return {
            "over": self.over, "total": self.total,
            "dominant_label": dominant.label if dominant else None,
            "dominant_name": dominant.name if dominant else None,
            "dominant_share": dominant.share if dominant else 0.0,
            "counts": [[c.label, c.name, c.count] for c in self.counts[:top]],
        }


def dominant_labels(perturbed_labels: torch.Tensor, class_names: tuple[str, ...] | list[str],
                    clean_labels: torch.Tensor | None = None) -> LabelHistogram:
    """Histogram of perturbed top-1 labels with class names, sorted by count (ties: lower label first).

    With clean_labels, only the fooled images (label changed) are counted: over="fooled".
    The dominant label is the mode, its share = count / number of images counted.
    """
    labels = perturbed_labels.flatten().cpu()
    over = "all"
    if clean_labels is not None:
        labels = labels[labels != clean_labels.flatten().cpu()]
        over = "fooled"
    total = labels.numel()
    if total == 0:
        return LabelHistogram([], 0, over)
    values, counts = torch.unique(labels, return_counts=True)
    order = sorted(zip(counts.tolist(), values.tolist()), key=lambda cv: (-cv[0], cv[1]))
    entries = [LabelCount(label, class_names[label] if 0 <= label < len(class_names) else str(label), count,
                          count / total) for count, label in order]
    return LabelHistogram(entries, total, over)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two (N, C) tensors → (N,)."""
    a = a.float() - a.float().mean(dim=1, keepdim=True)
    b = b.float() - b.float().mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def random_perturbation(shape: tuple[int, ...], eps: float, norm: str, generator: torch.Generator,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """The random baseline: noise of the same norm as the UAP budget.

    linf: uniform random signs ±eps per entry. l2: Gaussian direction scaled to ‖δ‖₂ = eps.
    """
    if norm == "linf":
        signs = torch.randint(0, 2, shape, generator=generator, device=generator.device)
        return ((signs * 2 - 1).float() * eps).to(device)
    noise = torch.randn(shape, generator=generator, device=generator.device)
    return (noise * (eps / noise.norm())).to(device)


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Projection onto the norm ball: L∞ clamp(δ, -eps, eps); L2 δ · min(1, eps / ‖δ‖₂)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.norm()
    return delta * torch.clamp(eps / length.clamp_min(1e-12), max=1.0)
