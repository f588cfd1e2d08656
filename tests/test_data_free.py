"""The data-free family — GD-UAP, FFF, TRM-UAP — against their pseudocode (uap_core/algorithms/gd_uap.py, fff.py,
trm_uap.py, data_free.py) on a tiny conv model, their priors, and their claim on a real model.

Measured claim (CIFAR-10 ResNet-20, eps 8/255 L∞, 300 iterations at the default lr 0.1/255, no fit image at all,
1,500 held-out images, seeds 0 / 1 / 2): held-out fooling ratio GD-UAP 0.705 / 0.625 / 0.741, FFF 0.681 / 0.668 /
0.714, TRM-UAP (Gaussian prior) 0.489 / 0.551 / 0.550, against 0.296 / 0.302 / 0.313 for random ±eps noise on the
same images. The test (seed 0, 500 held-out images) measured 0.736, 0.706, 0.502 against 0.290, and asks for
random + 0.25 (GD-UAP, FFF) and random + 0.12 (TRM-UAP, still rising at 300 iterations: 0.65 after 1,000).
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from uap_core.algorithms import AttackSetup, get_algorithm
from uap_core.algorithms import priors
from uap_core.images import load_images
from uap_core.models import Classifier, ModelSpec
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig

EPS = 0.1
SIZE = 8
MEAN = 0.5
STD = 0.25


def tiny_model(seed: int = 0) -> Classifier:
    """Three conv layers (the objectives' layers) and a linear head; normalisation (x − 0.5) / 0.25."""
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(4, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    spec = ModelSpec(name="tiny", title="tiny", family="test", dataset="cifar10", input_size=SIZE,
                     resize_size=SIZE, mean=(MEAN,) * 3, std=(STD,) * 3)
    return Classifier(network, spec)


def convs(model: Classifier) -> list[nn.Conv2d]:
    return [m for m in model.network if isinstance(m, nn.Conv2d)]


def conv_outputs(model: Classifier, x: torch.Tensor) -> list[torch.Tensor]:
    """The three conv outputs of clamp-free pixel images x, computed by hand (no hooks)."""
    net = model.network
    h = (x - MEAN) / STD
    a1 = net[0](h)
    a2 = net[2](net[1](a1))
    a3 = net[4](net[3](a2))
    return [a1, a2, a3]


def data_free_setup(model: Classifier, seed: int = 0, eps: float = EPS) -> AttackSetup:
    """What the Run hands a data-free method: no fit images, only their shape."""
    return AttackSetup(model, torch.zeros((0, 3, SIZE, SIZE), dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                       eps, "linf", None, torch.Generator().manual_seed(seed))


def make(name: str, setup: AttackSetup, **params):
    cls = get_algorithm(name)
    return cls(setup, parse_params(cls.Params, params))


def initial_delta(seed: int, eps: float = EPS) -> torch.Tensor:
    """δ₀ ~ U(−eps, eps), the first draw of the seeded generator."""
    return (torch.rand((3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed)) * 2 - 1) * eps


def saturation(delta: torch.Tensor, eps: float) -> float:
    return (delta.abs() >= eps * (1 - 1e-5)).float().mean().item()


class ReferenceAdam:
    """δ moved by torch.optim.Adam on a loss L(δ) (minimised), clipped to ±eps, with GD-UAP's saturation rule."""

    def __init__(self, delta: torch.Tensor, lr: float, eps: float, saturation_rule: bool = True) -> None:
        self.delta = delta.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.delta], lr=lr)
        self.eps, self.rule, self.previous, self.halvings = eps, saturation_rule, 0.0, []

    def step(self, loss_fn) -> float:
        self.optimizer.zero_grad()
        loss = loss_fn(self.delta)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.delta.clamp_(-self.eps, self.eps)
            s = saturation(self.delta, self.eps)
            fire = self.rule and s > 0.5 and abs(s - self.previous) < 1e-5
            self.previous = s
            if fire:
                self.delta.div_(2)
            self.halvings.append(fire)
        return loss.item()


# ---------------------------------------------------------------------------------------------- the exact steps
def test_gd_uap_steps_are_adam_on_the_log_energy_of_the_conv_layers():
    model = tiny_model()
    setup = data_free_setup(model)
    algorithm = make("gd_uap", setup, lr=0.01, iterations=4)
    assert torch.equal(algorithm.delta, initial_delta(0))  # δ₀ uniform in ±eps from the seeded generator
    assert algorithm.steps_per_epoch() == 4 and len(algorithm.epoch_batches()) == 4

    def loss(d):  # L = −Σ log(‖a_ℓ(δ alone)‖² / 2); δ alone = the network's zero image (its mean) + δ
        return -sum(torch.log(a.square().sum() / 2) for a in conv_outputs(model, (MEAN + d[None]).clamp(0, 1)))

    reference = ReferenceAdam(initial_delta(0), lr=0.01, eps=EPS)
    for batch in algorithm.epoch_batches():
        expected_loss = reference.step(loss)
        stats = algorithm.step(batch)
        assert torch.allclose(algorithm.delta, reference.delta.detach(), atol=1e-7)
        assert stats["loss"] == pytest.approx(-expected_loss, rel=1e-5)  # the ascended objective
        assert stats["image_gradients"] == 1 and math.isnan(stats["batch_fooling_ratio"])
        assert stats["linf"] <= EPS + 1e-7
    assert not any(reference.halvings)


def test_saturation_rule_fires_only_when_saturated_and_stalled():
    algorithm = make("gd_uap", data_free_setup(tiny_model()))
    with torch.no_grad():
        algorithm.delta.fill_(EPS)  # fully saturated, but changed from 0 (the official sat_prev starts at 0)
    assert not algorithm.saturation_halving()
    assert algorithm.saturation_halving()  # saturated (1.0 > 0.5) and unchanged: halve
    assert torch.allclose(algorithm.delta, torch.full_like(algorithm.delta, EPS / 2))
    assert not algorithm.saturation_halving()  # saturation 0 now
    with torch.no_grad():
        algorithm.delta.view(-1)[: algorithm.delta.numel() * 2 // 5] = EPS  # 40 % saturated, stalled: no
    algorithm.saturation_halving()
    assert not algorithm.saturation_halving()
    with torch.no_grad():
        algorithm.delta.view(-1)[: algorithm.delta.numel() * 3 // 5] = -EPS  # 60 %: changed: no; stalled: yes
    assert not algorithm.saturation_halving()
    before = algorithm.delta.clone()
    assert algorithm.saturation_halving()
    assert torch.equal(algorithm.delta, before / 2) and algorithm.rescales == 2


def test_saturation_halving_in_the_loop_matches_the_reference():
    """A large lr saturates δ at once; the rule then halves δ whenever the saturation stalls above 0.5, and Adam's
    moments carry over (the official code)."""
    model, eps = tiny_model(seed=1), 0.02
    algorithm = make("gd_uap", data_free_setup(model, seed=1, eps=eps), lr=1.0, iterations=6)

    def loss(d):
        return -sum(torch.log(a.square().sum() / 2) for a in conv_outputs(model, (MEAN + d[None]).clamp(0, 1)))

    reference = ReferenceAdam(initial_delta(1, eps), lr=1.0, eps=eps)
    for batch in algorithm.epoch_batches():
        reference.step(loss)
        stats = algorithm.step(batch)
        assert torch.allclose(algorithm.delta, reference.delta.detach(), atol=1e-7)
        assert stats["linf"] <= eps + 1e-9
    # step 1: saturated but changed from 0 → no; then every step re-saturates δ (lr ≫ eps) and stalls → halve
    assert reference.halvings == [False] + [True] * 5, reference.halvings
    assert stats["rescales"] == sum(reference.halvings)


def test_fff_maximises_the_mean_absolute_activation_and_halves_on_schedule():
    model = tiny_model(seed=2)
    algorithm = make("fff", data_free_setup(model, seed=2), lr=0.01, iterations=5, halve_every=2)

    def loss(d):  # L = −Σ log(mean |a_ℓ(δ alone)|)
        return -sum(torch.log(a.abs().mean()) for a in conv_outputs(model, (MEAN + d[None]).clamp(0, 1)))

    reference = ReferenceAdam(initial_delta(2), lr=0.01, eps=EPS, saturation_rule=False)
    for i, batch in enumerate(algorithm.epoch_batches()):  # official: after update i when i % 2 == 0 and i != 0
        expected_loss = reference.step(loss)
        if i and i % 2 == 0:
            with torch.no_grad():
                reference.delta.div_(2)
        stats = algorithm.step(batch)
        assert torch.allclose(algorithm.delta, reference.delta.detach(), atol=1e-7)
        assert stats["loss"] == pytest.approx(-expected_loss, rel=1e-5)
    assert stats["rescales"] == 2


@pytest.mark.parametrize("negative", ["paper", "code"])
def test_trm_uap_truncated_ratio_on_the_first_layers_with_the_gauss_prior(negative):
    """p_rate 0.7 of 3 conv layers → the first 2 in the positive term; n_rate 0.4 → the first 1 in the negative
    term; the forward stops after the second conv layer. Prior: 1 Gaussian image around the zero image with sd
    (30, 20, 10)/255 (the curriculum at iteration 1: std 10), drawn after δ₀ from the same generator."""
    model = tiny_model(seed=3)
    algorithm = make("trm_uap", data_free_setup(model, seed=3), lr=0.01, iterations=2, p_rate=0.7, n_rate=0.4,
                     lam=1.5, negative=negative)
    assert len(algorithm.layers) == 2
    generator = torch.Generator().manual_seed(3)
    delta0 = (torch.rand((3, SIZE, SIZE), generator=generator) * 2 - 1) * EPS
    assert torch.equal(algorithm.delta, delta0)
    third_conv_calls = []
    convs(model)[2].register_forward_hook(lambda *args: third_conv_calls.append(1))

    reference = ReferenceAdam(delta0, lr=0.01, eps=EPS)
    for batch in algorithm.epoch_batches():
        sd = torch.tensor([30, 20, 10]).view(1, 3, 1, 1) / 255
        prior = (torch.randn((1, 3, SIZE, SIZE), generator=generator) * sd + MEAN).clamp(0, 1)

        def loss(d):
            a = conv_outputs(model, (prior + d).clamp(0, 1))
            pos = sum(torch.log(x.clamp(min=0).square().sum() / 2 + 1e-9) for x in a[:2])
            neg_part = a[0].clamp(max=0) if negative == "paper" else a[0].clamp(min=0)
            return 1.5 * torch.log(neg_part.norm() / 2 + 1e-9) - pos

        expected_loss = reference.step(loss)
        third_conv_calls.clear()
        stats = algorithm.step(batch)
        assert not third_conv_calls  # the forward stopped after the second conv layer
        assert torch.allclose(algorithm.delta, reference.delta.detach(), atol=1e-7)
        assert stats["loss"] == pytest.approx(-expected_loss, rel=1e-5)
        assert stats["image_gradients"] == 1 and math.isnan(stats["batch_fooling_ratio"])
    assert algorithm.last_logits is None


def test_gd_uap_data_prior_reads_the_fit_images():
    """With prior "data" GD-UAP is not data-free: batches of fit images, the same objective over the batch."""
    model = tiny_model(seed=4)
    pixels = torch.randint(0, 256, (10, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    with torch.no_grad():
        clean = model(pixels.float() / 255).argmax(1)
    cls = get_algorithm("gd_uap")
    params = parse_params(cls.Params, {"prior": "data", "batch_size": 4, "iterations": 3, "lr": 0.01})
    assert cls.is_data_free(parse_params(cls.Params, {})) and not cls.is_data_free(params)
    setup = AttackSetup(model, pixels, clean, EPS, "linf", None, torch.Generator().manual_seed(4))
    algorithm = cls(setup, params)
    batches = algorithm.epoch_batches()
    assert [len(b) for b in batches] == [4, 4, 4] and algorithm.image_gradients_per_step() == 4
    x = pixels[batches[0]].float() / 255
    d = algorithm.delta.clone().requires_grad_(True)
    objective = sum(torch.log(a.square().sum() / 2) for a in conv_outputs(model, (x + d).clamp(0, 1)))
    (gradient,) = torch.autograd.grad(objective, d)
    stats = algorithm.step(batches[0])
    assert torch.allclose(algorithm.previous_gradient, gradient, rtol=1e-4, atol=1e-6)
    assert stats["loss"] == pytest.approx(objective.item(), rel=1e-5) and stats["image_gradients"] == 4
    fooled = model((x + d.detach()).clamp(0, 1)).argmax(1) != clean[batches[0]]  # δ before the step
    assert stats["batch_fooling_ratio"] == pytest.approx(fooled.float().mean().item())


# ---------------------------------------------------------------------------------------------- the priors
def test_jigsaw_images_are_random_colour_rectangles():
    images = priors.jigsaw_images(3, (3, 20, 30), 2, torch.Generator().manual_seed(0), "cpu", median_radius=0)
    assert images.shape == (3, 3, 20, 30) and images.min() >= 0 and images.max() <= 1
    levels = images * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    for image in images:  # 2 cuts per axis → at most 3 × 3 pieces; every row/column changes colour ≤ 2 times
        assert len(torch.unique(image.flatten(1), dim=1).T) <= 9
        assert (image[:, 1:] != image[:, :-1]).any(0).any(1).sum() <= 2
        assert (image[:, :, 1:] != image[:, :, :-1]).any(0).any(0).sum() <= 2
    again = priors.jigsaw_images(3, (3, 20, 30), 2, torch.Generator().manual_seed(0), "cpu", median_radius=0)
    assert torch.equal(images, again)


def test_median_filter_over_a_disk_matches_a_direct_loop():
    image = torch.rand(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    out = priors.median_filter_disk(image, 2)
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if dy * dy + dx * dx <= 4]  # 13 points
    for c in range(2):
        for y in range(7):
            for x in range(9):
                values = torch.stack([image[0, c, min(max(y + dy, 0), 6), min(max(x + dx, 0), 8)]
                                      for dy, dx in offsets])
                assert out[0, c, y, x] == values.median()


def test_range_prior_and_trm_curriculum_follow_the_official_code():
    images = priors.range_images(64, (3, 32, 32), (0.485, 0.456, 0.406), torch.Generator().manual_seed(0), "cpu")
    assert images.min() >= 0 and images.max() <= 1
    means, stds = images.mean((0, 2, 3)), images.std((0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.485, 0.456, 0.406]), atol=0.01)
    assert torch.allclose(stds, torch.tensor([62, 58, 52]) / 255, atol=0.01)  # little clipping at 2 sd
    gauss = priors.trm_gauss_curriculum
    assert [gauss(t) for t in (1, 399, 400, 1600, 2400, 3200, 5000)] == [
        (1, 10), (1, 10), (1, 20), (2, 50), (4, 70), (8, 90), (8, 127)]
    jigsaw = priors.trm_jigsaw_curriculum
    assert [jigsaw(t) for t in (1, 599, 600, 1600, 3200, 3600, 4200, 9000)] == [
        (1, 1), (1, 1), (1, 2), (2, 3), (4, 6), (4, 7), (4, 7), (4, 7)]


# ---------------------------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def cifar(cifar_npz):
    return load_images(cifar_npz, 32, 32)


def cifar_config(cifar_npz, algorithm: str, iterations: int, seed: int = 0, **kwargs) -> RunConfig:
    return RunConfig(model="cifar_resnet20", algorithm=algorithm, eps=8 / 255, norm="linf", images=str(cifar_npz),
                     fit=500, holdout=500, seed=seed, device="cpu", eval_every=10_000,
                     params={"iterations": iterations, **kwargs.pop("params", {})}, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,margin", [("gd_uap", 0.25), ("fff", 0.25), ("trm_uap", 0.12)])
def test_beats_random_noise_on_held_out_cifar_without_any_image(algorithm, margin, cifar_npz, cifar):
    run = Run(cifar_config(cifar_npz, algorithm, 300), images=cifar)
    result = run.run_to_end()
    summary = result.summary()
    print(algorithm, {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                              "dominant_share", "seconds", "steps")})
    assert summary["fit_images"] == 0 and run.algorithm.setup.pixels.shape == (0, 3, 32, 32)
    assert result.info["keep"] == "last" and result.steps == 300
    assert result.delta.abs().max().item() <= 8 / 255 + 1e-7
    assert summary["fooling_ratio"] >= summary["random_fooling_ratio"] + margin, summary


def test_data_free_runs_never_read_the_fit_images_and_repeat_bit_for_bit(cifar_npz, cifar):
    """Same seed → the same δ, even when the fit images are replaced by their negatives; another seed → another
    δ. The algorithm is given an empty fit tensor."""
    negative = dataclasses.replace(cifar, pixels=255 - cifar.pixels)
    for algorithm, params in (("gd_uap", {}), ("fff", {}), ("trm_uap", {}), ("trm_uap", {"prior": "jigsaw"})):
        deltas = []
        for images, seed in ((cifar, 0), (negative, 0), (cifar, 0), (cifar, 1)):
            config = cifar_config(cifar_npz, algorithm, 5, seed=seed, params=params, keep="last")
            config.fit, config.holdout = 20, 20
            run = Run(config, images=images)
            result = run.run_to_end()
            assert run.algorithm.setup.pixels.shape == (0, 3, 32, 32) and result.info["fit_images"] == 0
            assert result.delta.abs().max().item() <= 8 / 255 + 1e-7
            deltas.append(result.delta)
        assert torch.equal(deltas[0], deltas[1]) and torch.equal(deltas[0], deltas[2]), algorithm
        assert not torch.equal(deltas[0], deltas[3]), algorithm
