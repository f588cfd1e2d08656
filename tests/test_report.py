"""The per-image report of a perturbation (what Inspect, the demo gallery and `evaluate` show), checked against
the definitions on a real CIFAR-10 ResNet-20 and real test images."""

import pytest
import torch

from uap_core import metrics
from uap_core.artifacts import UAPArtifact
from uap_core.images import load_images
from uap_core.models import load_model
from uap_core.report import perturbation_report, perturbed_pixels
from uap_core.transfer import evaluate_uap

EPS = 8 / 255


@pytest.fixture(scope="module")
def model():
    return load_model("cifar_resnet20", "cpu")


@pytest.fixture(scope="module")
def images(cifar_npz, model):
    return load_images(cifar_npz, 32, 32, list(model.spec.class_names), limit=200)


def _reference(model, images, delta):
    """Clean / perturbed softmax straight from the model, written out once more."""
    x = images.pixels.float() / 255
    with torch.no_grad():
        clean = model(x).softmax(1)
        perturbed = model((x + delta).clamp(0, 1)).softmax(1)
    return clean, perturbed


def test_predictions_confidences_and_summary_follow_the_definitions(model, images):
    delta = metrics.random_perturbation((3, 32, 32), EPS, "linf", torch.Generator().manual_seed(1)) * 2
    report = perturbation_report(model, images, delta, scale=0.5)
    clean, perturbed = _reference(model, images, delta * 0.5)
    assert report.count == len(images) == len(report.predictions)
    assert [p.clean_label for p in report.predictions] == clean.argmax(1).tolist()
    assert [p.perturbed_label for p in report.predictions] == perturbed.argmax(1).tolist()
    assert torch.allclose(torch.tensor([p.clean_confidence for p in report.predictions]), clean.max(1).values,
                          atol=1e-5)
    assert torch.allclose(torch.tensor([p.perturbed_confidence for p in report.predictions]),
                          perturbed.max(1).values, atol=1e-5)
    fooled = sum(p.fooled for p in report.predictions)
    assert report.fooled_count == fooled and 0 < fooled < len(images)
    assert report.fooling_ratio == pytest.approx(fooled / len(images))
    assert report.delta.abs().max().item() == pytest.approx(EPS, abs=1e-6)  # the scale is applied
    truth = images.labels
    assert report.evaluation.clean_accuracy == pytest.approx((clean.argmax(1) == truth).float().mean().item())
    dominant = report.evaluation.histogram.dominant
    assert dominant.count == int(torch.bincount(perturbed.argmax(1)).max())


def test_random_baseline_has_the_perturbations_norm(model, images):
    """L∞: uniform signs ±max|δ|; L2: a random direction of length ‖δ‖₂ — the same draw as metrics defines."""
    delta = torch.zeros(3, 32, 32)
    delta[:, :8, :8] = EPS  # an L2-small, L∞-large perturbation: the two baselines differ a lot
    clean_labels = torch.tensor([p.clean_label for p in perturbation_report(model, images, delta).predictions])
    for norm, size in (("linf", EPS), ("l2", float(delta.norm()))):
        noise = metrics.random_perturbation((3, 32, 32), size, norm, torch.Generator().manual_seed(3))
        _, perturbed = _reference(model, images, noise)
        expected = (perturbed.argmax(1) != clean_labels).float().mean().item()
        report = perturbation_report(model, images, delta, norm=norm, seed=3)
        assert report.random_fooling_ratio == pytest.approx(expected)
    assert perturbation_report(model, images, delta * 0).random_fooling_ratio == 0.0


def test_evaluate_uap_resamples_reads_norm_and_target_from_metadata(model, images):
    big = metrics.random_perturbation((3, 64, 64), EPS, "linf", torch.Generator().manual_seed(2))
    artifact = UAPArtifact(big, {"norm": "linf", "target": 3}, None)
    report = evaluate_uap(artifact, model, images)
    assert report.resized_from == (64, 64) and tuple(report.delta.shape) == (3, 32, 32)
    assert report.delta.abs().max() <= EPS + 1e-7  # resampling never raises the L∞ norm
    share = sum(p.perturbed_label == 3 for p in report.predictions) / len(images)
    assert report.evaluation.target_success == pytest.approx(share)
    same_size = evaluate_uap(UAPArtifact(report.delta, {}, None), model, images)
    assert same_size.resized_from is None and same_size.fooling_ratio == report.fooling_ratio


def test_perturbed_pixels_are_the_rounded_clamped_sum(images):
    delta = torch.full((3, 32, 32), 0.5)
    pictures = perturbed_pixels(images.pixels[:4], delta)
    expected = ((images.pixels[:4].float() / 255 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    assert pictures.dtype == torch.uint8 and torch.equal(pictures, expected)


def test_report_of_a_runs_evaluation_matches_a_fresh_report(model, images):
    """A finished run's held-out evaluation carries the top-1 probabilities, so the demo gallery's report needs no
    forward pass; it must say what a fresh perturbation_report says, also over just the first images kept."""
    from uap_core.report import report_from_evaluation
    from uap_core.run import Run, RunConfig

    run = Run(RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps=EPS, device="cpu", fit=100, holdout=100,
                        epochs=1, keep="last", params={"batch_size": 50}), model=model, images=images)
    result = run.run_to_end()
    kept = run.holdout_set.subset(range(30))
    from_run = report_from_evaluation(result.evaluation, kept, result.delta, result.random_evaluation.fooling_ratio,
                                      model.spec.class_names)
    fresh = perturbation_report(model, kept, result.delta)
    assert from_run.count == 30 and from_run.fooling_ratio == fresh.fooling_ratio
    for a, b in zip(from_run.predictions, fresh.predictions):
        assert (a.clean_label, a.perturbed_label, a.name) == (b.clean_label, b.perturbed_label, b.name)
        assert a.clean_confidence == pytest.approx(b.clean_confidence, abs=1e-5)
        assert a.perturbed_confidence == pytest.approx(b.perturbed_confidence, abs=1e-5)
    whole = report_from_evaluation(result.evaluation, run.holdout_set, result.delta, 0.0, model.spec.class_names)
    assert whole.evaluation is result.evaluation and whole.fooled_count == round(result.evaluation.fooling_ratio * 100)
