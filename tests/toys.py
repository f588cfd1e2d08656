"""Tiny models for exact, hand-checkable steps (numbers independent of any real network)."""

from __future__ import annotations

import torch
from torch import nn

from uap_core.models import Classifier, ModelSpec


def toy_model(classes: int = 5, seed: int = 0) -> Classifier:
    """A seeded linear classifier on 4×4 RGB images, wrapped (normalisation mean 0.5, std 0.25, frozen)."""
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes))
    spec = ModelSpec(name="toy", title="toy", family="test", dataset="cifar10", input_size=4, resize_size=4,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Classifier(network, spec)


def assert_on_the_boundary(delta: torch.Tensor, eps: float, norm: str) -> None:
    """δ within its budget and pressed against it: ‖δ‖∞ = eps (L∞) or ‖δ‖₂ = eps (L2)."""
    import pytest

    if norm == "linf":
        assert delta.abs().max().item() <= eps + 1e-7
        assert delta.abs().max().item() == pytest.approx(eps)
    else:
        assert delta.norm().item() <= eps * (1 + 1e-5)
        assert delta.norm().item() == pytest.approx(eps, rel=1e-4)
