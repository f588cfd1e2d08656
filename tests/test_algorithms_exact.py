"""Each algorithm's update against its pseudocode (docs/algorithms.md), on a tiny linear classifier where
every gradient can be recomputed by hand."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from uap_core.algorithms import AttackSetup, get_algorithm
from uap_core.params import parse_params

from toys import assert_on_the_boundary, toy_model

EPS = 10 / 255


def setup_for(model, n=20, seed=0, target=None, norm="linf", eps=EPS):
    pixels = torch.randint(60, 200, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with torch.no_grad():
        clean = model(pixels.float() / 255).argmax(1)
    return AttackSetup(model, pixels, clean, eps, norm, target, torch.Generator().manual_seed(seed))


def reference_gradient(model, x, labels, delta, beta=9.0):
    """d/dδ mean(min(CE(f(clamp(x + δ)), y), beta)) — the papers' clamped loss."""
    d = delta.clone().requires_grad_(True)
    loss = F.cross_entropy(model((x + d).clamp(0, 1)), labels, reduction="none").clamp(max=beta).mean()
    return torch.autograd.grad(loss, d)[0]


def test_sga_outer_step_is_sign_of_aggregated_inner_gradients():
    model = toy_model()
    setup = setup_for(model)
    algorithm = get_algorithm("sga")(setup, parse_params(get_algorithm("sga").Params,
                                                          {"batch_size": 20, "minibatch_size": 4, "inner_passes": 2}))
    indices = torch.arange(20)
    reference_generator = torch.Generator().manual_seed(0)  # same stream as the setup's
    x = setup.pixels.float() / 255
    step = 0.1 * EPS
    d_in, inner = torch.zeros(3, 4, 4), []
    for _ in range(2 * 20 // 4):  # K·B/m inner steps
        pick = torch.randperm(20, generator=reference_generator)[:4]
        g = reference_gradient(model, x[pick], setup.clean_labels[pick], d_in)
        d_in = (d_in + step * g.sign()).clamp(-EPS, EPS)
        inner.append(g)
    expected = (step * torch.stack(inner).mean(0).sign()).clamp(-EPS, EPS)

    stats = algorithm.step(indices)
    assert torch.allclose(algorithm.delta, expected, atol=1e-7)
    # the inner pre-search is thrown away: one step of size `step` from zero
    assert torch.allclose(algorithm.delta.abs(), torch.full_like(algorithm.delta, step))
    assert stats["image_gradients"] == 10 * 4 and stats["sign_ops"] == 1
    G = torch.stack(inner).flatten(1)
    agg = G.mean(0)
    agreement = torch.nn.functional.cosine_similarity(G, agg[None]).mean().item()
    adjacent = torch.nn.functional.cosine_similarity(G[1:], G[:-1]).mean().item()
    assert stats["inner_agreement"] == pytest.approx(agreement, abs=1e-5)
    assert stats["inner_adjacent_cosine"] == pytest.approx(adjacent, abs=1e-5)
    q = 1 - agg.abs().sum() / (agg.numel() ** 0.5 * agg.norm())
    assert stats["quantisation_error"] == pytest.approx(q.item(), abs=1e-6)


def test_sgd_uap_step_and_gradient_cosine():
    model = toy_model(seed=1)
    setup = setup_for(model, seed=1)
    cls = get_algorithm("sgd_uap")
    algorithm = cls(setup, parse_params(cls.Params, {"batch_size": 10}))
    x = setup.pixels.float() / 255
    first, second = torch.arange(10), torch.arange(10, 20)
    g1 = reference_gradient(model, x[first], setup.clean_labels[first], torch.zeros(3, 4, 4))
    algorithm.step(first)
    assert torch.allclose(algorithm.delta, (0.1 * EPS * g1.sign()).clamp(-EPS, EPS), atol=1e-7)
    delta1 = algorithm.delta.clone()
    g2 = reference_gradient(model, x[second], setup.clean_labels[second], delta1)
    stats = algorithm.step(second)
    assert torch.allclose(algorithm.delta, (delta1 + 0.1 * EPS * g2.sign()).clamp(-EPS, EPS), atol=1e-7)
    cos = (g1.flatten() @ g2.flatten() / (g1.norm() * g2.norm())).item()
    assert stats["grad_cosine"] == pytest.approx(cos, abs=1e-5)
    assert stats["sign_flip_rate"] == pytest.approx((g1.sign() != g2.sign()).float().mean().item())
    assert stats["sign_ops"] == 2


def test_budgets_hold_for_many_steps_linf_and_l2():
    model = toy_model(seed=2)
    for norm, eps in (("linf", EPS), ("l2", 0.2)):
        setup = setup_for(model, seed=2, norm=norm, eps=eps)
        cls = get_algorithm("sgd_uap")
        algorithm = cls(setup, parse_params(cls.Params, {"batch_size": 5, "step_size": eps / 3}))
        for _ in range(30):
            algorithm.step(torch.randperm(20)[:5])
        assert_on_the_boundary(algorithm.delta, eps, norm)


def test_targeted_sgd_uap_moves_images_to_the_target():
    model = toy_model(seed=3)
    setup = setup_for(model, seed=3, target=4, eps=0.3)
    cls = get_algorithm("sgd_uap")
    algorithm = cls(setup, parse_params(cls.Params, {"batch_size": 20, "step_size": 0.03}))
    x = setup.pixels.float() / 255
    before = (model(x).argmax(1) == 4).float().mean().item()
    for _ in range(20):
        algorithm.step(torch.arange(20))
    after = (model((x + algorithm.delta).clamp(0, 1)).argmax(1) == 4).float().mean().item()
    assert after > before and after >= 0.9


def test_deepfool_on_a_linear_model_is_the_closed_form():
    """For an affine classifier DeepFool reaches the nearest boundary in one iteration:
    r = (|f_l| + 1e-4) / |w_l|^2 · w_l, scaled by (1 + overshoot)."""
    model = toy_model(classes=3, seed=4)
    setup = setup_for(model, n=4, seed=4)
    cls = get_algorithm("uap")
    algorithm = cls(setup, parse_params(cls.Params, {"num_candidates": 3}))
    x = setup.pixels[:1].float() / 255
    dv, iterations, label = algorithm.deepfool(x, torch.zeros(3, 4, 4))
    weight = model.network[1].weight / 0.25  # d logits / d x (normalisation: (x - 0.5) / 0.25)
    logits = model(x)[0].detach()
    others = [k for k in range(3) if k != label]
    w = torch.stack([weight[k] - weight[label] for k in others])
    f = torch.stack([logits[k] - logits[label] for k in others])
    best = int((f.abs() / w.norm(dim=1)).argmin())
    expected = 1.02 * (f[best].abs() + 1e-4) / w[best].norm() ** 2 * w[best]
    assert iterations == 1 and label == int(logits.argmax())
    assert torch.allclose(dv.flatten(), expected, rtol=1e-4, atol=1e-7)
    assert int(model((x + dv).clamp(0, 1)).argmax()) != label


def test_uap_accumulates_only_for_unfooled_images_and_projects():
    model = toy_model(classes=3, seed=5)
    setup = setup_for(model, n=12, seed=5, eps=0.05)
    cls = get_algorithm("uap")
    algorithm = cls(setup, parse_params(cls.Params, {"images_per_step": 12, "num_candidates": 3}))
    stats = algorithm.step(torch.arange(12))
    assert algorithm.delta.abs().max().item() <= 0.05 + 1e-7
    assert stats["deepfool_converged"] >= 1
    assert stats["batch_fooling_ratio"] + stats["deepfool_images"] / 12 == pytest.approx(1.0)
    # the cost: every DeepFool iteration is one backward over num_candidates (3) copies of the image
    assert stats["image_gradients"] % 3 == 0 and stats["image_gradients"] >= 3 * stats["deepfool_images"]


def test_params_validation_names_the_range():
    from uap_core.errors import ParameterError

    cls = get_algorithm("sga")
    with pytest.raises(ParameterError, match=r"batch_size = 0 .*allowed \[1, 100000\]"):
        parse_params(cls.Params, {"batch_size": 0})
    with pytest.raises(ParameterError, match="minibatch_size = -3"):
        parse_params(cls.Params, {"minibatch_size": "-3"})
    with pytest.raises(ParameterError, match="whole number"):
        parse_params(cls.Params, {"inner_passes": 2.5})
    with pytest.raises(ParameterError, match="loss"):
        parse_params(cls.Params, {"loss": "hinge"})
    with pytest.raises(ParameterError, match="unknown parameter"):
        parse_params(cls.Params, {"overshoot": 0.1})
    with pytest.raises(ParameterError, match="unknown algorithm"):
        get_algorithm("fgsm")
    defaults = dataclasses.asdict(parse_params(cls.Params, {}))
    assert defaults == {"batch_size": 250, "minibatch_size": 10, "inner_passes": 4, "step_size": None,
                        "beta": 9.0, "momentum": 0.0, "loss": "ce"}


def test_cpu_gradient_batches_are_chunked_by_pixels_with_the_same_sum(monkeypatch):
    """On the CPU a batch is split into chunks of at most CPU_CHUNK_PIXELS pixels (bounded activation memory);
    the gradient is the whole batch's mean all the same."""
    from uap_core.algorithms import base

    model = toy_model()
    monkeypatch.setattr(base, "CPU_CHUNK_PIXELS", 6 * 4 * 4)  # 6 images of 4×4 per forward/backward
    setup = setup_for(model, n=20)
    algorithm = get_algorithm("sgd_uap")(setup, parse_params(get_algorithm("sgd_uap").Params, {"batch_size": 20}))
    assert algorithm.chunk_size == 6
    seen = []
    original = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, x: seen.append(len(x)) or original(self, x))
    delta = torch.full((3, 4, 4), 0.01)
    gradient, _loss, _fooled = algorithm.gradient(torch.arange(20), delta)
    assert seen == [6, 6, 6, 2]
    x = setup.pixels.float() / 255
    expected = reference_gradient(model, x, setup.clean_labels, delta)
    assert torch.allclose(gradient, expected, rtol=1e-5, atol=1e-8)
