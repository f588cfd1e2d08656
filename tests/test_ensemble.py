"""Ensemble surrogates (the SGA paper's ensemble setting) and fair budgets in image-gradients.

The ensemble's loss is the mean of its members' losses, each against its own clean prediction: its gradient is
the mean of the members' gradients (checked exactly on CIFAR-10 ResNet-20 + ResNet-56), and a δ fitted against
both fools each of them on held-out images far beyond random noise.
"""

import dataclasses

import pytest
import torch

from uap_core.algorithms import get_algorithm
from uap_core.algorithms.base import AttackSetup
from uap_core.errors import ParameterError
from uap_core.evaluation import evaluate, predict_labels
from uap_core.images import load_images
from uap_core.models import get_spec, load_model, model_status
from uap_core.models.ensemble import Ensemble
from uap_core.params import parse_params
from uap_core.run import Run, RunConfig

EPS = 8 / 255


@pytest.fixture(scope="module")
def cifar(cifar_npz):
    return load_images(cifar_npz, 32, 32)


@pytest.fixture(scope="module")
def members():
    return [load_model("cifar_resnet20", "cpu"), load_model("cifar_resnet56", "cpu")]


def _sgd(model, pixels, labels):
    setup = AttackSetup(model, pixels, labels, EPS, "linf", None, torch.Generator().manual_seed(0))
    sgd = get_algorithm("sgd_uap")
    return sgd(setup, parse_params(sgd.Params, {}))


def test_ensemble_gradient_is_the_mean_of_the_members_gradients(cifar, members):
    pixels = cifar.pixels[:40]
    ensemble = Ensemble(members)
    own_labels = torch.stack([predict_labels(m, pixels) for m in members], 1)  # (N, 2): each member's own
    assert (own_labels[:, 0] != own_labels[:, 1]).any(), "the test needs images the members disagree on"
    delta = torch.empty(3, 32, 32).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(3))
    batch = torch.arange(40)
    g_ensemble, loss_ensemble, fooled_ensemble = _sgd(ensemble, pixels, own_labels).gradient(batch, delta)
    singles = [_sgd(m, pixels, own_labels[:, i]).gradient(batch, delta) for i, m in enumerate(members)]
    assert torch.allclose(g_ensemble, (singles[0][0] + singles[1][0]) / 2, atol=1e-7, rtol=1e-4)
    assert loss_ensemble.item() == pytest.approx((singles[0][1] + singles[1][1]).item() / 2, rel=1e-5)
    assert fooled_ensemble.item() == pytest.approx((singles[0][2] + singles[1][2]).item() / 2)
    # the ensemble's own prediction (what evaluation measures) is the mean of the logits
    with torch.no_grad():
        x = pixels.float() / 255
        assert torch.allclose(ensemble(x), (members[0](x) + members[1](x)) / 2, atol=1e-5)


@pytest.mark.slow
def test_one_delta_against_two_models_fools_both(cifar, cifar_npz, members):
    """SGD-UAP on ResNet-20 + ResNet-56 (8/255, 300 fit / 300 held out, 3 epochs of B 50: 18 steps). Measured on
    the held-out images: ResNet-20 0.64 and ResNet-56 0.62, random ±eps noise 0.29 on both."""
    config = RunConfig(model="cifar_resnet20,cifar_resnet56", algorithm="sgd_uap", eps=EPS, images=str(cifar_npz),
                       fit=300, holdout=300, seed=0, device="cpu", epochs=3, eval_every=1_000_000, keep="last",
                       params={"batch_size": 50})
    run = Run(config, model=Ensemble(members), images=cifar)
    result = run.run_to_end()
    assert result.info["surrogates"] == ["cifar_resnet20", "cifar_resnet56"]
    assert result.metadata()["model"] == "cifar_resnet20,cifar_resnet56"
    assert result.delta.abs().max().item() <= EPS + 1e-7
    held_out = run.holdout_set.pixels
    for member in members:
        own = evaluate(member, held_out, result.delta)
        noise = evaluate(member, held_out, run.random_delta)  # random ±eps signs, as the run's baseline
        print(member.spec.name, own.fooling_ratio, noise.fooling_ratio)
        assert own.fooling_ratio >= 1.7 * noise.fooling_ratio and own.fooling_ratio >= noise.fooling_ratio + 0.2


def test_ensemble_names_and_refusals():
    spec = get_spec("cifar_resnet20, cifar_resnet56")
    assert spec.name == "cifar_resnet20,cifar_resnet56" and spec.input_size == 32 and spec.num_classes == 10
    with pytest.raises(ParameterError, match="same labels"):
        get_spec("cifar_resnet20,efficientnet_lite0")
    with pytest.raises(ParameterError, match="same input size"):
        get_spec("efficientnet_lite0,efficientnet_lite1")
    with pytest.raises(ParameterError, match="twice"):
        get_spec("cifar_resnet20,cifar_resnet20")
    with pytest.raises(ParameterError, match="fits one model at a time"):
        RunConfig(model="cifar_resnet20,cifar_resnet56", algorithm="uap").validated()


def test_ensemble_status_is_its_members(tmp_path, monkeypatch):
    """An ensemble loads offline when every member does; otherwise it reports its first member that does not."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet20-12fca82f.th").write_bytes(b"status only looks for the file")  # no ../shared needed
    monkeypatch.setenv("UAP_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("UAP_SHARED_DIR", str(tmp_path / "no-shared"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert model_status("cifar_resnet20").available
    status = model_status("cifar_resnet20,cifar_resnet56")
    assert (status.state, status.spec.family) == ("needs download", "ensemble")
    assert status.detail.startswith("cifar_resnet56: resnet56-4bfd9763.th")
    (weights / "resnet56-4bfd9763.th").symlink_to(weights / "resnet20-12fca82f.th")  # any file counts as present
    status = model_status("cifar_resnet56, cifar_resnet20")
    assert status.available and status.detail.startswith(f"cifar_resnet56: weights: {weights}")


def test_budget_in_image_gradients_is_equal_across_methods(cifar, cifar_npz, members):
    """SGA (K·B = 40 image-gradients a step at B 10, m 10, K 4) and SGD-UAP (10 a step) given the same budget of
    400 image-gradients: both stop at the budget ("budget"), SGA after 10 steps and SGD-UAP after 40, and the events
    count the image-gradients spent."""
    base = RunConfig(model="cifar_resnet20", images=str(cifar_npz), fit=200, holdout=100, device="cpu", eps=EPS,
                     keep="last", max_image_gradients=400, eval_every=1_000_000)
    runs = {"sga": {"batch_size": 10, "minibatch_size": 10, "inner_passes": 4}, "sgd_uap": {"batch_size": 10}}
    for algorithm, params in runs.items():
        run = Run(dataclasses.replace(base, algorithm=algorithm, params=params), model=members[0], images=cifar)
        events = list(run.events())
        steps = [e for e in events if e.kind == "step"]
        assert run.result.reason == "budget" and run.result.info["image_gradients"] == 400
        assert steps[-1].data["image_gradients_total"] == 400
        assert len(steps) == {"sga": 10, "sgd_uap": 40}[algorithm]
        assert events[0].data["planned_image_gradients"] == 400 and events[0].data["total_steps"] == len(steps)
        assert all(e.data["image_gradients_total"] <= 400 for e in events if e.kind == "eval")
