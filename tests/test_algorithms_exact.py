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


def reference_uap_pass(weight, bias, std, x, clean, order, eps, norm, overshoot=0.02, max_iter=10, candidates=3):
    """One pass of UAP over the images ``order`` (docs/algorithms.md, "uap"), written out for an affine classifier
    f(x) = W (x − mean) / std + b, whose gradients are the rows of W / std: no autograd, no code of the method.

    Returns (v, DeepFool iterations per visited image (0 for a fooled one), images already fooled, images whose
    DeepFool converged)."""
    logits_of = lambda image: weight @ ((image.flatten() - 0.5) / std) + bias  # noqa: E731
    v = torch.zeros_like(x[0])
    iterations_per_image, fooled, converged = [], 0, 0
    for i in order:
        image = (x[i] + v).clamp(0, 1)
        top = logits_of(image).topk(candidates).indices
        original = int(top[0])
        r_total, perturbed, iterations = torch.zeros_like(image), image, 0
        while original == int(clean[i]) and int(logits_of(perturbed).argmax()) == original and iterations < max_iter:
            # (a fooled image, k(x_i + v) ≠ k(x_i), runs no DeepFool: the pseudocode's "if" comes first)
            logits = logits_of(perturbed)
            w = torch.stack([(weight[k] - weight[original]) / std for k in top[1:]])  # w_k = ∇f_k − ∇f_orig
            f = torch.stack([logits[k] - logits[original] for k in top[1:]])
            l = int((f.abs() / w.norm(dim=1)).argmin())
            r_total = r_total + ((f[l].abs() + 1e-4) / w[l].norm() ** 2 * w[l]).view_as(image)
            perturbed = (image + (1 + overshoot) * r_total).clamp(0, 1)
            iterations += 1
        iterations_per_image.append(iterations)
        if original != int(clean[i]):  # k(x_i + v) ≠ k(x_i): already fooled, v unchanged
            fooled += 1
        elif iterations < max_iter - 1:  # DeepFool converged: v = Project(v + dv)
            converged += 1
            v = v + (1 + overshoot) * r_total
            v = v.clamp(-eps, eps) if norm == "linf" else v * min(1.0, eps / float(v.norm()))
    return v, iterations_per_image, fooled, converged


@pytest.mark.parametrize("norm, eps", [("linf", 0.03), ("l2", 0.06)])
def test_uap_pass_equals_an_independent_reimplementation(norm, eps):
    """The δ of a whole UAP pass equals the pass written out by hand above with the classifier's closed-form
    gradients; so do the counters the step reports. 12 images near black and white (so the clamp to [0, 1] makes
    DeepFool take up to 9 iterations) in a shuffled order: the pass skips a fooled image, accumulates converged
    DeepFool steps, leaves out one that did not converge, and the projection binds."""
    model = toy_model(classes=3, seed=7)
    pixels = torch.randint(0, 256, (12, 3, 4, 4), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    pixels = torch.where(pixels > 128, pixels.clamp(min=235), pixels.clamp(max=20))
    with torch.no_grad():
        clean = model(pixels.float() / 255).argmax(1)
    setup = AttackSetup(model, pixels, clean, eps, norm, None, torch.Generator().manual_seed(7))
    cls = get_algorithm("uap")
    algorithm = cls(setup, parse_params(cls.Params, {"images_per_step": 12, "num_candidates": 3}))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(7))
    x = setup.pixels.float() / 255
    linear = model.network[1]
    expected, iterations, fooled, converged = reference_uap_pass(linear.weight, linear.bias, 0.25, x,
                                                                 setup.clean_labels, order.tolist(), eps, norm)
    stats = algorithm.step(order)
    assert fooled >= 1 and converged >= 2 and converged < 12 - fooled and max(iterations) > 1
    assert iterations.count(0) == fooled  # no gradient spent on an image already fooled
    size = expected.abs().max() if norm == "linf" else expected.norm()
    assert float(size) == pytest.approx(eps, rel=1e-5)  # the projection binds
    assert torch.allclose(algorithm.delta, expected, rtol=1e-4, atol=1e-6)
    assert stats["deepfool_converged"] == converged and stats["deepfool_images"] == 12 - fooled
    assert stats["batch_fooling_ratio"] == pytest.approx(fooled / 12)
    assert stats["image_gradients"] == 3 * sum(iterations)  # each DeepFool iteration: a backward over 3 copies
    # end of the pass: the fit-set fooling ratio of the final δ, against the model's own predictions
    algorithm.end_epoch()
    with torch.no_grad():
        reference_ratio = (model((x + expected).clamp(0, 1)).argmax(1) != setup.clean_labels).float().mean().item()
    assert algorithm.last_fit_fooling_ratio == pytest.approx(reference_ratio)


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
