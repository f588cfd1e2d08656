"""The metrics against hand-computed values on tiny inputs (definitions: docs/algorithms.md)."""

import math

import pytest
import torch

from uap_core import metrics


def test_fooling_ratio_counts_changed_labels():
    clean = torch.tensor([1, 2, 3, 4])
    perturbed = torch.tensor([1, 5, 3, 0])
    assert metrics.fooling_ratio(clean, perturbed) == 0.5


def test_accuracy_ignores_unknown_labels():
    predicted = torch.tensor([1, 2, 3, 4])
    labels = torch.tensor([1, -1, 0, 4])
    assert metrics.accuracy(predicted, labels) == pytest.approx(2 / 3)
    assert metrics.accuracy(predicted, torch.full((4,), -1)) is None


def test_quantisation_error_definition():
    d = 16
    equal = torch.tensor([1.0, -1.0] * (d // 2))
    assert metrics.quantisation_error(equal) == pytest.approx(0.0, abs=1e-7)
    one_hot = torch.zeros(d)
    one_hot[3] = 5.0
    assert metrics.quantisation_error(one_hot) == pytest.approx(1 - 1 / math.sqrt(d))
    g = torch.tensor([3.0, -4.0])  # |g|_1 = 7, |g|_2 = 5
    assert metrics.quantisation_error(g) == pytest.approx(1 - 7 / (math.sqrt(2) * 5), abs=1e-6)
    # QE equals 1 - cos(g, sign(g)) for any g
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert metrics.quantisation_error(g) == pytest.approx(1 - metrics.cosine(g, torch.sign(g)), abs=1e-6)


def test_cosine_sign_flips_saturation():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([1.0, 1.0, 0.0])
    assert metrics.cosine(a, b) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(metrics.cosine(a, torch.zeros(3)))
    assert metrics.sign_flip_rate(torch.tensor([1.0, -2.0, 3.0, -4.0]), torch.tensor([1.0, 2.0, -3.0, -4.0])) == 0.5
    eps = 10 / 255
    delta = torch.tensor([eps, -eps, 0.0, eps / 2])
    assert metrics.saturation(delta, eps) == 0.5


def test_norms_in_both_units():
    delta = torch.zeros(3, 2, 2)
    delta[0, 0, 0] = 3 / 255
    delta[1, 1, 1] = -4 / 255
    n = metrics.norms(delta)
    assert n["linf"] == pytest.approx(4 / 255) and n["linf_255"] == pytest.approx(4)
    assert n["l2"] == pytest.approx(5 / 255) and n["l2_255"] == pytest.approx(5)


def test_dominant_label_histogram():
    names = ["cat", "dog", "toaster", "fish"]
    perturbed = torch.tensor([2, 2, 1, 2, 0, 1])
    hist = metrics.dominant_labels(perturbed, names)
    assert [(c.name, c.count) for c in hist.counts] == [("toaster", 3), ("dog", 2), ("cat", 1)]
    assert hist.dominant.share == pytest.approx(0.5) and hist.total == 6 and hist.over == "all"
    clean = torch.tensor([2, 0, 1, 3, 0, 3])  # fooled: indices 1, 3, 5 → labels 2, 2, 1
    fooled = metrics.dominant_labels(perturbed, names, clean)
    assert fooled.over == "fooled" and fooled.total == 3
    assert [(c.label, c.count) for c in fooled.counts] == [(2, 2), (1, 1)]
    assert metrics.dominant_labels(torch.tensor([], dtype=torch.long), names).dominant is None


def test_random_perturbation_norms():
    gen = torch.Generator().manual_seed(0)
    eps = 10 / 255
    linf = metrics.random_perturbation((3, 8, 8), eps, "linf", gen)
    assert torch.allclose(linf.abs(), torch.full_like(linf, eps))
    assert 0.3 < (linf > 0).float().mean() < 0.7
    l2 = metrics.random_perturbation((3, 8, 8), 2.0, "l2", gen)
    assert l2.norm().item() == pytest.approx(2.0, rel=1e-5)


def test_projection_onto_the_balls():
    v = torch.tensor([0.5, -0.01, -0.2])
    assert torch.equal(metrics.project(v, 0.1, "linf"), torch.tensor([0.1, -0.01, -0.1]))
    w = torch.tensor([3.0, 4.0])
    assert torch.allclose(metrics.project(w, 1.0, "l2"), torch.tensor([0.6, 0.8]))
    assert torch.equal(metrics.project(w, 10.0, "l2"), w)


def test_pearson_rowwise():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 1.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [-1.0, 0.0, -1.0]])
    assert torch.allclose(metrics.pearson(a, b), torch.tensor([1.0, -1.0]))
