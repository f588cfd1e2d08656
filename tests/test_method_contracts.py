"""The contract every method of the registry keeps, checked for all of them through one table (foolbox's pattern:
one list of attacks, shared tests), on a tiny CPU conv classifier of 8×8 images:

1. δ stays within its budget after every step, under L∞ and under L2, and moves (finite, non-zero);
2. the same seed gives the same δ bit for bit (whatever the global RNG holds), another seed another δ;
3. the image-gradients a step reports are the ones it spent: the test counts, on the classifier itself (and on a
   method's private ``working_model`` copy, DM-UAP's), the images whose input-gradient a backward computed and
   those whose backward went to the weights only (DM-UAP's weight steps: a forward + backward pass each, counted
   as one image-gradient), and ``image_gradients_per_step`` (what a budgeted run plans with) never exceeds what a
   step reports;
4. a data-free method never reads a fit image: other fit images leave its δ identical bit for bit, for the method
   handed real fit images and for a whole :class:`~uap_core.run.Run` (which hands it none) — while every
   data-driven case (GD-UAP with its "data" prior included) does change with them.
5. a run checkpointed after step k (mid-epoch and at an epoch's end) and abandoned there, as a killed process
   would leave it, continues in a fresh Run (a new model object, new images) to the δ, last δ and history of an
   uninterrupted run, bit for bit: the method's ``state_dict`` holds all it needs.

6. a robust run (``RunConfig.robust``: δ fitted through random transformations) of every method that takes one
   keeps 1–3 and 5: within budget, same seed same δ, the cost it reports is the one it spends (a view is one
   image-gradient, as the exact image), and it resumes bit for bit (the views are drawn from the run's generator,
   which the checkpoint holds); the others refuse it in one line.

A method added to the registry without a row in ``METHODS`` fails ``test_every_registered_method_has_a_row``.
The toy classifier is a conv net (not ``tests/toys.py``'s linear one): the data-free objectives and SV-UAP read
conv activations, and GAP's generator needs 8×8 images.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from uap_core.algorithms import ALGORITHMS, AttackSetup, get_algorithm
from uap_core.checkpoint import CheckpointPolicy
from uap_core.images import ImageSet
from uap_core.models import Classifier, ModelSpec
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig
from uap_core.transforms import Robustness

SIZE = 8
FIT = 8  # fit images of a setup
STEPS = 3  # steps each case takes
BUDGETS = {"linf": 0.1, "l2": 0.5}  # eps in pixel units (L2: over the 3·8·8 entries)

# one row per registered method: hyperparameters small enough for a few steps on 8 toy images
METHODS: dict[str, dict] = {
    "sga": {"batch_size": 8, "minibatch_size": 4, "inner_passes": 1},
    "sgd_uap": {"batch_size": 4},
    "dm_uap": {"batch_size": 4, "weight_steps": 2, "image_steps": 2, "rho": 0.5, "image_radius": 20.0},
    "uap": {"images_per_step": 4, "num_candidates": 3},
    "df_uap": {"batch_size": 4},
    "cos_uap": {"batch_size": 4},
    "sv_uap": {"num_images": 4, "iterations": STEPS},
    "gd_uap": {"iterations": STEPS},
    "fff": {"iterations": STEPS, "halve_every": 2},
    "trm_uap": {"iterations": STEPS},
    "gap": {"batch_size": 4, "ngf": 4, "n_blocks": 1},
}
VARIANTS: list[tuple[str, dict]] = [  # settings that take another path through a method
    ("gd_uap", {"iterations": STEPS, "prior": "range", "batch_size": 2}),
    ("gd_uap", {"iterations": STEPS, "prior": "data", "batch_size": 4}),  # reads the fit images: data-driven
    ("trm_uap", {"iterations": STEPS, "prior": "jigsaw"}),
]
CASES = [pytest.param(name, params, id=name) for name, params in METHODS.items()] + [
    pytest.param(name, params, id=f"{name}-{params['prior']}") for name, params in VARIANTS]
# methods whose reported cost is an upper bound by design (documented in the method: J v by forward-mode AD and
# two forward-only passes are counted as image-gradients too); every other method reports exactly what it spent
UPPER_BOUND = {"sv_uap"}
# methods whose cost per step depends on the data (DeepFool's iterations): image_gradients_per_step is a lower bound
DATA_DEPENDENT_COST = {"uap"}


class CountingClassifier(Classifier):
    """A Classifier that counts what passes through it: ``forward_images`` (every image of every forward),
    ``gradient_images`` (images whose input-gradient a backward computed: a hook on the input fires then) and
    ``weight_gradient_images`` (images of a forward whose input needs no gradient but whose backward reached the
    logits: a gradient for the weights only)."""

    def __init__(self, network: nn.Module, spec: ModelSpec) -> None:
        super().__init__(network, spec)
        self.forward_images = 0
        self.gradient_images = 0
        self.weight_gradient_images = 0

    def _count_gradient(self, grad: torch.Tensor) -> None:
        self.gradient_images += grad.shape[0]

    def _count_weight_gradient(self, grad: torch.Tensor) -> None:
        self.weight_gradient_images += grad.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_images += x.shape[0]
        if x.requires_grad:
            x.register_hook(self._count_gradient)
        logits = super().forward(x)
        if not x.requires_grad and logits.requires_grad:
            logits.register_hook(self._count_weight_gradient)
        return logits


def contract_model(seed: int = 0) -> CountingClassifier:
    """conv → ReLU → max-pool → conv → ReLU → global average → linear (5 classes); normalisation (x − 0.5) / 0.25."""
    with torch.random.fork_rng(devices=[]):  # seeded weights; the global RNG is left as the test set it
        torch.manual_seed(seed)
        network = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(6, 5))
    spec = ModelSpec(name="contract-toy", title="contract toy", family="test", dataset="cifar10", input_size=SIZE,
                     resize_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)
    return CountingClassifier(network, spec)


def fit_pixels(seed: int = 0, n: int = FIT) -> torch.Tensor:
    """(n, 3, 8, 8) uint8 random images."""
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def build(name: str, params: dict, *, norm: str = "linf", seed: int = 0, pixels: torch.Tensor | None = None,
          model: CountingClassifier | None = None, robust: str | None = None):
    """The method on a fresh setup, as the Run builds it: clean labels and (where used) clean logits of the fit
    images; a data-free method is handed the fit images all the same (test 4 checks it does not read them)."""
    model = model or contract_model()
    pixels = fit_pixels() if pixels is None else pixels
    cls = get_algorithm(name)
    with torch.no_grad():
        logits = model(pixels.float() / 255)
    setup = AttackSetup(model, pixels, logits.argmax(1), BUDGETS[norm], norm, None, torch.Generator().manual_seed(seed),
                        clean_logits=logits if cls.uses_clean_logits else None,
                        robust=Robustness(robust) if robust else None)
    return cls(setup, parse_params(cls.Params, params))


def batches(method, steps: int = STEPS):
    """The first ``steps`` batches the Run would hand the method (epoch after epoch)."""
    taken = 0
    while True:
        for batch in method.epoch_batches():
            yield batch
            taken += 1
            if taken == steps:
                return
        method.end_epoch()


def deltas_after_steps(name: str, params: dict, **setup) -> list[torch.Tensor]:
    method = build(name, params, **setup)
    out = []
    for batch in batches(method):
        method.step(batch)
        out.append(method.delta.detach().clone())
    return out


def test_every_registered_method_has_a_row():
    assert list(METHODS) == list(ALGORITHMS)


# ---------------------------------------------------------------------------------------------- 1. the budget
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name, params", CASES)
def test_respects_its_norm_and_budget(name, params, norm):
    eps = BUDGETS[norm]
    for step, delta in enumerate(deltas_after_steps(name, params, norm=norm), 1):
        assert delta.shape == (3, SIZE, SIZE) and delta.dtype == torch.float32
        assert torch.isfinite(delta).all()
        size = delta.abs().max().item() if norm == "linf" else delta.norm().item()
        assert size <= eps * (1 + 1e-6), f"{name} step {step}: ‖δ‖ = {size} > eps {eps} ({norm})"
        assert size > 0, f"{name} step {step}: δ is zero"


# ---------------------------------------------------------------------------------------------- 2. the seed
@pytest.mark.parametrize("name, params", CASES)
def test_same_seed_same_delta_other_seed_another(name, params):
    torch.manual_seed(123)  # the global RNG differs between the two same-seed runs: a method must not read it
    first = deltas_after_steps(name, params, seed=0)
    torch.manual_seed(456)
    again = deltas_after_steps(name, params, seed=0)
    other = deltas_after_steps(name, params, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again)), f"{name}: same seed, different δ"
    assert not torch.equal(first[-1], other[-1]), f"{name}: seeds 0 and 1 gave the same δ"


# ---------------------------------------------------------------------------------------------- 3. the cost
@pytest.mark.parametrize("name, params", CASES)
def test_counts_the_image_gradients_it_spends(name, params):
    model = contract_model()
    method = build(name, params, model=model)
    counters = [model] + ([method.working_model] if hasattr(method, "working_model") else [])
    planned = method.image_gradients_per_step()
    for step, batch in enumerate(batches(method), 1):
        for counter in counters:
            counter.gradient_images = counter.weight_gradient_images = 0
        reported = int(method.step(batch)["image_gradients"])
        spent = sum(counter.gradient_images + counter.weight_gradient_images for counter in counters)
        assert spent > 0, f"{name} step {step}: no input-gradient was computed"
        if name in UPPER_BOUND:
            assert spent <= reported, f"{name} step {step}: spent {spent} > reported {reported}"
        else:
            assert reported == spent, f"{name} step {step}: reported {reported}, spent {spent}"
        if name in DATA_DEPENDENT_COST:
            assert planned <= reported, f"{name} step {step}: planned {planned} > reported {reported}"
        else:
            assert planned == reported, f"{name} step {step}: planned {planned}, reported {reported}"


def test_counting_sees_every_image_of_a_batch():
    """The counter itself: one backward over a batch of 5 counts 5; a forward without a backward counts none."""
    model = contract_model()
    x = torch.rand(5, 3, SIZE, SIZE, requires_grad=True)
    model(x).sum().backward()
    model(torch.rand(2, 3, SIZE, SIZE, requires_grad=True))
    with torch.no_grad():
        model(torch.rand(4, 3, SIZE, SIZE))
    assert (model.gradient_images, model.forward_images) == (5, 11)
    model.requires_grad_(True)  # a backward to the weights only (DM-UAP's weight steps) counts apart
    torch.autograd.grad(model(torch.rand(3, 3, SIZE, SIZE)).sum(), list(model.parameters()))
    assert (model.gradient_images, model.weight_gradient_images) == (5, 3)


# ---------------------------------------------------------------------------------------------- 4. no fit image
@pytest.mark.parametrize("name, params", CASES)
def test_a_data_free_method_reads_no_fit_image(name, params):
    """Two setups that differ only in their fit images (random ones, and their photographic negative): a data-free
    method's δ is the same bit for bit, a data-driven method's is not."""
    data_free = get_algorithm(name).is_data_free(parse_params(get_algorithm(name).Params, params))
    assert data_free == (name in ("gd_uap", "fff", "trm_uap") and params.get("prior") != "data")
    real = deltas_after_steps(name, params, pixels=fit_pixels(0))
    poisoned = deltas_after_steps(name, params, pixels=255 - fit_pixels(0))
    same = all(torch.equal(a, b) for a, b in zip(real, poisoned))
    assert same == data_free, f"{name}: δ {'identical' if same else 'changed'} with other fit images"


def toy_images(n: int = 24, seed: int = 0) -> ImageSet:
    return ImageSet(fit_pixels(seed, n), torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed)),
                    [f"toy{i}" for i in range(n)], source="toy")


@pytest.mark.parametrize("name, params", [c for c in CASES if c.values[0] in ("gd_uap", "fff", "trm_uap")
                                          and c.values[1].get("prior") != "data"])
def test_a_data_free_run_is_blind_to_its_fit_images(name, params):
    """Through the Run (what the CLI and the UI drive): fit images replaced, held-out images kept → the same δ and
    the same held-out evaluation; the run reports no fit image."""
    images = toy_images()
    config = RunConfig(model="cifar_resnet20", algorithm=name, eps=BUDGETS["linf"], images="toy", fit=12,
                       holdout=12, seed=0, device="cpu", params=params, eval_every=1)
    fit, _held_out = images.split(12, 12, 0)
    fit_positions = torch.tensor([images.names.index(n) for n in fit.names])
    poisoned = ImageSet(images.pixels.clone(), images.labels, images.names, source="toy")
    poisoned.pixels[fit_positions] = 255 - poisoned.pixels[fit_positions]
    assert not torch.equal(poisoned.pixels, images.pixels)
    results = [Run(config, model=contract_model(), images=image_set).run_to_end() for image_set in (images, poisoned)]
    assert results[0].info["fit_images"] == 0 and results[0].steps == STEPS
    assert torch.equal(results[0].delta, results[1].delta)
    assert results[0].evaluation.fooling_ratio == results[1].evaluation.fooling_ratio
    evaluations = [event for event in results[0].history if event["kind"] == "eval"]
    assert evaluations and all(math.isnan(event["fit_fooling_ratio"]) for event in evaluations)  # no fit-set eval


# ---------------------------------------------------------------------------------------------- 5. checkpoints
TIMINGS = ("elapsed", "images_per_second", "step_seconds", "seconds")


def without_timings(history: list[dict]) -> str:
    """A history as comparable text: the timings left out, NaN written as NaN (NaN != NaN as a float)."""
    return json.dumps([{k: v for k, v in event.items() if k not in TIMINGS} for event in history], sort_keys=True)


@pytest.mark.parametrize("name, params", CASES)
def test_a_checkpointed_run_resumes_bit_for_bit(name, params, tmp_path):
    config = RunConfig(model="cifar_resnet20", algorithm=name, eps=BUDGETS["linf"], images="toy", fit=12, holdout=12,
                       seed=0, device="cpu", params=params, eval_every=1, epochs=2)
    whole = Run(config, model=contract_model(), images=toy_images()).run_to_end()
    assert whole.steps >= 4
    for crash_after in (2, 3):  # mid-epoch, and at an epoch's end (2 steps per epoch for SGA, else 3)
        path = tmp_path / f"{name}-{crash_after}.checkpoint"
        run = Run(config, model=contract_model(), images=toy_images(), checkpoints=CheckpointPolicy(path, 1))
        for event in run.events():  # step k's checkpoint is written before step k + 1 starts
            if event.kind == "step" and event.step == crash_after + 1:
                break  # abandoned mid-run: no result, no final checkpoint
        assert run.result is None and run.checkpoints.written_step == crash_after
        resumed = Run.from_checkpoint(path, model=contract_model(), images=toy_images())
        events = [event.as_dict() for event in resumed.events() if event.kind != "done"]
        result = resumed.result
        assert torch.equal(result.delta, whole.delta) and torch.equal(result.last_delta, whole.last_delta), (
            f"{name}: resumed after step {crash_after}, δ differs")
        assert without_timings(result.history) == without_timings(whole.history), name
        assert (result.steps, result.best_step, result.reason) == (whole.steps, whole.best_step, whole.reason)
        assert events[0].pop("resumed_from_step") == crash_after
        assert without_timings(events) == without_timings(result.history)  # the saved events are yielded again


@pytest.mark.parametrize("name, params", CASES)
@pytest.mark.parametrize("fit, budget", [(11, 23), (13, 50)])
def test_the_step_counter_never_passes_its_total(name, params, fit, budget):
    """A budgeted Run at an odd fit size (a shorter last batch, which costs less): the "start" event's total is
    the step the run ends at, every step's counter stays within it, and where a step's cost does not depend on δ
    the budget is honest — the run spends at least the budget, and the step before the last had not reached it."""
    config = RunConfig(model="cifar_resnet20", algorithm=name, eps=BUDGETS["linf"], images="toy", fit=fit,
                       holdout=24 - fit, seed=0, device="cpu", params=params, eval_every=100, keep="last",
                       max_image_gradients=budget)
    result = Run(config, model=contract_model(), images=toy_images()).run_to_end()
    total = result.history[0]["total_steps"]
    steps = [event for event in result.history if event["kind"] == "step"]
    assert [event["step"] for event in steps] == list(range(1, len(steps) + 1))
    assert len(steps) <= total and result.steps == len(steps)
    if name in DATA_DEPENDENT_COST:
        assert result.reason == "budget"  # the budget spent or the planned steps taken, whichever came first
        return
    spent = [event["image_gradients_total"] for event in steps]
    if result.reason == "budget":
        assert result.steps == total and spent[-1] >= budget and (len(spent) == 1 or spent[-2] < budget)
    else:  # a data-free method's iterations end first
        assert result.reason == "completed" and result.steps == total and spent[-1] < budget


def test_the_classroom_race_counter_by_hand():
    """SGD-UAP B 10 on 104 fit images (13 photos × 8 crops: batches of 10, …, 10, 4) and 600 image-gradients:
    5 epochs cost 520, then 8 batches of 10 reach 600 — 63 steps, announced as 63 (it used to say 60)."""
    images = ImageSet(fit_pixels(1, 120), torch.zeros(120, dtype=torch.int64), [f"t{i}" for i in range(120)], source="toy")
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps=BUDGETS["linf"], images="toy", fit=104,
                       holdout=16, seed=0, device="cpu", params={"batch_size": 10}, eval_every=1000, keep="last",
                       max_image_gradients=600)
    result = Run(config, model=contract_model(), images=images).run_to_end()
    assert result.history[0]["total_steps"] == 63 == result.steps and result.info["epochs"] == 6
    assert result.info["image_gradients"] == 600 and result.reason == "budget"


# ---------------------------------------------------------------------------------------------- 6. robust runs
ROBUST_CASES = [pytest.param(name, params, id=f"{name}-robust") for name, params in METHODS.items()
                if not ALGORITHMS[name].robust_refusal]


def test_the_robust_methods_are_the_gradient_methods():
    refused = {name for name, cls in ALGORITHMS.items() if cls.robust_refusal}
    assert refused == {"uap", "sv_uap", "gd_uap", "fff", "trm_uap"}
    assert {c.values[0] for c in ROBUST_CASES} == set(ALGORITHMS) - refused


@pytest.mark.parametrize("name, params", ROBUST_CASES)
def test_a_robust_method_keeps_its_budget_seed_and_cost(name, params):
    """The screen-to-camera bundle (every transformation) on the toy: δ within eps after every step and not the
    plain δ, the same seed the same δ, and every step reports the image-gradients it spent."""
    plain = deltas_after_steps(name, params)
    first = deltas_after_steps(name, params, robust="screen")
    torch.manual_seed(99)
    again = deltas_after_steps(name, params, robust="screen")
    for delta in first:
        assert torch.isfinite(delta).all() and 0 < delta.abs().max().item() <= BUDGETS["linf"] * (1 + 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(first, again)), f"{name}: same seed, different robust δ"
    assert not torch.equal(first[-1], plain[-1]), f"{name}: the robust δ is the plain one"
    model = contract_model()
    method = build(name, params, model=model, robust="screen")
    counters = [model] + ([method.working_model] if hasattr(method, "working_model") else [])
    for batch in batches(method):
        for counter in counters:
            counter.gradient_images = counter.weight_gradient_images = 0
        reported = int(method.step(batch)["image_gradients"])
        spent = sum(counter.gradient_images + counter.weight_gradient_images for counter in counters)
        assert reported == spent == method.image_gradients_for_batch(len(batch)), name


@pytest.mark.parametrize("name, params", ROBUST_CASES)
def test_a_robust_run_resumes_bit_for_bit(name, params, tmp_path):
    config = RunConfig(model="cifar_resnet20", algorithm=name, eps=BUDGETS["linf"], images="toy", fit=12, holdout=12,
                       seed=0, device="cpu", params=params, eval_every=1, epochs=2, robust="screen")
    whole = Run(config, model=contract_model(), images=toy_images()).run_to_end()
    path = tmp_path / f"{name}.checkpoint"
    run = Run(config, model=contract_model(), images=toy_images(), checkpoints=CheckpointPolicy(path, 1))
    for event in run.events():
        if event.kind == "step" and event.step == 3:
            break
    resumed = Run.from_checkpoint(path, model=contract_model(), images=toy_images()).run_to_end()
    assert torch.equal(resumed.delta, whole.delta) and torch.equal(resumed.last_delta, whole.last_delta), name
    assert resumed.metadata()["robust"]["kind"] == "screen"


@pytest.mark.parametrize("name", ["uap", "sv_uap", "gd_uap", "fff", "trm_uap"])
def test_the_other_methods_refuse_robust_in_one_line(name):
    from uap_core.errors import ParameterError

    with pytest.raises(ParameterError) as refused:
        RunConfig(model="cifar_resnet20", algorithm=name, robust="jpeg").validated()
    message = str(refused.value)
    assert message.startswith(f"{name} cannot fit a robust δ: ") and "\n" not in message
