"""DM-UAP (uap_core/algorithms/dm_uap.py): one step against its pseudocode on the linear toy, the run's model never
written to (not even on an error mid-step), and the CIFAR-10 claim on ResNet-20 beside SGA at the same images and
the same budget."""

import pytest
import torch
import torch.nn.functional as F

from uap_core.algorithms import AttackSetup, get_algorithm
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig

from toys import toy_model

EPS = 0.1
TOY = {"batch_size": 8, "lr": 0.01, "weight_decay": 0.01, "rho": 0.5, "weight_steps": 3,
       "image_radius": 0.8 * 224 / 4, "image_steps": 3, "smooth_rate": 0.2, "beta": 9.0}  # image radius 0.8 at 4 px


def toy_method(model=None, params=TOY):
    model = model or toy_model()
    pixels = torch.randint(60, 200, (8, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        clean = model(pixels.float() / 255).argmax(1)
    cls = get_algorithm("dm_uap")
    method = cls(AttackSetup(model, pixels, clean, EPS, "linf", None, torch.Generator().manual_seed(0)),
                 parse_params(cls.Params, params))
    method.plan(2)  # epoch 1 of 2: half the radii
    return method


def logits_of(x, weight, bias):
    """The toy's forward with the given weights: normalise (mean 0.5, std 0.25), flatten, linear."""
    return ((x - 0.5) / 0.25).flatten(1) @ weight.T + bias


def test_one_step_is_the_pseudocode_on_the_toy():
    method = toy_method()
    model = method.setup.model
    x = method.setup.pixels.float() / 255
    y = method.setup.clean_labels
    delta0 = (torch.rand((3, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1) * EPS
    assert torch.equal(method.delta, delta0)  # δ ~ U(−eps, eps) from the seeded generator
    rho, radius, s = 0.25, 0.4, 0.2  # epoch 1 of 2
    assert method.radii() == pytest.approx((rho, radius))

    # 1. worst-case weights: 3 normalised descent steps of ρ/3 on the label-smoothed CE
    weight, bias = (p.detach().clone() for p in model.network[1].parameters())
    for _ in range(3):
        w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
        log_p = F.log_softmax(logits_of(x, w, b), -1)
        loss = ((1 - s) * -log_p.gather(1, y[:, None])[:, 0] + s * -log_p.mean(-1)).mean()
        gw, gb = torch.autograd.grad(loss, (w, b))
        norm = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())
        weight, bias = weight - rho / 3 * gw / (norm + 1e-12), bias - rho / 3 * gb / (norm + 1e-12)
    # 2. worst-case images: L2 PGD descending the CE, steps radius/8, projected, clamped
    worst = x.clone()
    for _ in range(3):
        leaf = worst.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(logits_of(leaf, weight, bias), y), leaf)
        g = g / (g.flatten(1).norm(dim=1) + 1e-10)[:, None, None, None]
        shift = worst - radius / 8 * g - x
        shift = shift * torch.clamp(radius / shift.flatten(1).norm(dim=1), max=1)[:, None, None, None]
        worst = (x + shift).clamp(0, 1)
    # 3. the δ gradient against both, then AdamW's first step (m̂ = ∇L, v̂ = ∇L²) and the clip
    d = delta0.clone().requires_grad_(True)
    ce = F.cross_entropy(logits_of((worst + d).clamp(0, 1), weight, bias), y, reduction="none").clamp(max=9.0)
    (g_delta,) = torch.autograd.grad(ce.mean(), d)
    grad_l = -g_delta
    expected = (delta0 * (1 - 0.01 * 0.01) - 0.01 * grad_l / (grad_l.abs() + 1e-8)).clamp(-EPS, EPS)

    # the method's pieces, then its whole step
    shift = method.perturb_weights(method.images(torch.arange(8)), y, rho)
    mine = list(method.working_model.network[1].parameters())
    assert torch.allclose(mine[0], weight, atol=1e-6) and torch.allclose(mine[1], bias, atol=1e-6)
    assert shift == pytest.approx(torch.sqrt((weight - model.network[1].weight).pow(2).sum()
                                             + (bias - model.network[1].bias).pow(2).sum()).item(), rel=1e-4)
    assert torch.allclose(method.perturb_images(x, y, radius), worst, atol=1e-6)
    assert torch.allclose(method.delta_gradient(worst, y)[0], g_delta, atol=1e-6)
    method.restore_weights()
    stats = method.step(torch.arange(8))
    assert torch.allclose(method.delta, expected, atol=1e-6)
    assert stats["image_gradients"] == 8 * (3 + 3 + 1) == method.image_gradients_per_step()
    # the inner problem matters: at the clean weights and images the δ gradient is another one
    d = delta0.clone().requires_grad_(True)
    plain = F.cross_entropy(model((x + d).clamp(0, 1)), y, reduction="none").clamp(max=9.0).mean()
    assert not torch.allclose(torch.autograd.grad(plain, d)[0], g_delta, atol=1e-4)
    # the working copy is back to the model's weights, bit for bit; the model itself was never written to
    for mine, original in zip(method.working_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(mine, original)
    assert not any(p.requires_grad for p in model.parameters())


def test_the_radii_grow_linearly_over_the_planned_epochs():
    method = toy_method()
    method.plan(4)
    seen = []
    for _ in range(5):
        seen.append(method.radii())
        method.end_epoch()
    expected = [(0.5 * e / 4, 0.8 * e / 4) for e in (1, 2, 3, 4, 4)]
    assert [value for pair in seen for value in pair] == pytest.approx([v for pair in expected for v in pair])


def test_an_error_mid_step_leaves_no_perturbed_weight(monkeypatch):
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = toy_method(model)
    delta = method.delta.clone()

    def fail(*_args):
        raise RuntimeError("out of something")

    monkeypatch.setattr(method, "perturb_images", fail)  # after the weight steps have moved the copy
    with pytest.raises(RuntimeError):
        method.step(torch.arange(8))
    for key, value in method.working_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(method.delta, delta)


# ---------------------------------------------------------------------------------------------- CIFAR-10 ResNet-20
CIFAR_EPS = 8 / 255
BUDGET = 5000  # image-gradients, for both methods
RACE = {
    # DM-UAP, official settings but 2 weight steps and 2 PGD steps (not 10 and 10) and a 2-epoch curriculum:
    # B 125 · (2 + 2 + 1) = 625 image-gradients a step, 8 AdamW steps
    "dm_uap": dict(epochs=2, params={"batch_size": 125, "weight_steps": 2, "image_steps": 2}),
    # SGA at B 125, m 10, K 4: 500 image-gradients a step, 10 aggregated sign steps
    "sga": dict(params={"batch_size": 125, "minibatch_size": 10, "inner_passes": 4}),
}


@pytest.fixture(scope="module")
def cifar_race(cifar_npz):
    from uap_core.models import load_model
    from uap_core.transfer import images_for

    model = load_model("cifar_resnet20", "cpu")
    images = images_for(model, str(cifar_npz))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, settings in RACE.items():
        config = RunConfig(model="cifar_resnet20", algorithm=name, eps=CIFAR_EPS, images=str(cifar_npz), fit=500,
                           holdout=1000, seed=0, device="cpu", eval_every=10_000, max_image_gradients=BUDGET,
                           **settings)
        results[name] = Run(config, model=model, images=images).run_to_end()
    return model, images, before, results


@pytest.mark.slow
def test_dm_uap_beats_random_noise_and_sga_on_held_out_cifar(cifar_race):
    """Fit 500 / held out 1,000 CIFAR-10 test images, eps 8/255, 5,000 image-gradients each, seed 0. Measured:
    DM-UAP 0.660, SGA 0.584, random ±eps noise 0.294 (SGD-UAP at B 25 and the same budget: 0.779 — on CIFAR many
    small sign steps win; DM-UAP's promise is for few images of a large model, not checked here)."""
    model, images, before, results = cifar_race
    dm, sga = (results[name].summary() for name in ("dm_uap", "sga"))
    print({name: {k: r.summary()[k] for k in ("fooling_ratio", "random_fooling_ratio", "image_gradients", "steps",
                                               "seconds")} for name, r in results.items()})
    assert dm["image_gradients"] == sga["image_gradients"] == BUDGET
    assert dm["heldout_images"] == 1000 and dm["fit_images"] == 500
    assert results["dm_uap"].delta.abs().max().item() <= CIFAR_EPS + 1e-7
    assert dm["fooling_ratio"] >= 1.5 * dm["random_fooling_ratio"], dm
    assert dm["fooling_ratio"] >= dm["random_fooling_ratio"] + 0.2, dm
    assert dm["fooling_ratio"] >= sga["fooling_ratio"] + 0.03, (dm, sga)


@pytest.mark.slow
def test_the_shared_model_is_untouched_and_the_same_seed_gives_the_same_delta(cifar_race):
    model, images, before, results = cifar_race
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)  # bit for bit, parameters and buffers
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    short = RunConfig(model="cifar_resnet20", algorithm="dm_uap", eps=CIFAR_EPS, images="cifar", fit=40, holdout=10,
                      seed=0, device="cpu", eval_every=10_000, epochs=2,
                      params={"batch_size": 20, "weight_steps": 1, "image_steps": 1})
    deltas = [Run(short, model=model, images=images).run_to_end().last_delta for _ in range(2)]
    assert torch.equal(deltas[0], deltas[1]) and deltas[0].abs().max() > 0
