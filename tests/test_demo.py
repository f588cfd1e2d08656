"""The classroom demo's settings (uap_core.presets.demo_config) on the real model and the embedded photos: the
perturbation it fits must clearly beat random ±eps noise on held-out photos it never saw, and on 200 real
ImageNet validation images. Run for a fixed number of steps (2 epochs = 22 steps, about as many as the demo's
45 s allow on 2 cores) instead of the time limit, so the result does not depend on the machine's speed."""

import dataclasses
import statistics

import pytest
import torch

from uap_core import metrics
from uap_core.evaluation import predict_labels
from uap_core.images import load_images
from uap_core.presets import RACE_BUDGET, demo_config, race_config
from uap_core.run import Run


def test_demo_fools_held_out_photos_and_real_imagenet_far_beyond_random_noise(lite0, imagenet_200):
    assert demo_config("cuda").compile == "off"  # compiling would take longer than the demo, even on a GPU
    config = dataclasses.replace(demo_config("cpu"), max_seconds=None, epochs=2)
    run = Run(config, model=lite0)
    result = run.run_to_end()
    summary = result.summary()
    print("demo", {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name", "steps",
                                           "seconds", "heldout_images", "fit_images")})
    assert summary["steps"] == 22 and summary["fit_images"] == 13 * 8 and summary["heldout_images"] == 12 * 4
    assert result.delta.abs().max().item() <= config.eps + 1e-7
    assert summary["fooling_ratio"] >= 2 * summary["random_fooling_ratio"], summary
    assert summary["fooling_ratio"] >= 0.25, summary

    real = load_images(imagenet_200, 224, 256, list(lite0.spec.class_names)).pixels
    clean = predict_labels(lite0, real)
    fooled = metrics.fooling_ratio(clean, predict_labels(lite0, real, result.delta))
    noise = metrics.random_perturbation(tuple(real.shape[1:]), config.eps, "linf", torch.Generator().manual_seed(0))
    fooled_by_noise = metrics.fooling_ratio(clean, predict_labels(lite0, real, noise))
    print(f"demo δ on 200 ImageNet validation images: {fooled:.3f}, random ±eps noise {fooled_by_noise:.3f}")
    assert fooled >= 1.5 * fooled_by_noise, (fooled, fooled_by_noise)


@pytest.mark.slow
def test_race_preset_shows_sga_and_sgd_uap_apart_at_equal_cost(lite0):
    """The classroom race (uap_core.presets.race_config) of SGA against SGD-UAP, 600 image-gradients each on the
    embedded photos. Measured (`python -m pytest -n 0 tests/test_demo.py -k race -s`): SGD-UAP 0.56 and SGA 0.44
    held-out fooling ratio (48 held-out crops) against 0.125 for random noise; SGD-UAP makes 63 sign steps, SGA 32 (each of SGA's steps aggregates 4 inner
    gradients of 5 crops). The adjacent-step gradient cosine is near zero for both at this scale (SGA 0.002,
    SGD-UAP −0.005 on average): the stability the SGA paper shows needs its batches of 250 images, so it is not
    asserted here. Held to what the race is documented to show (presets.race_config): both spend the same budget
    (SGD-UAP in 63 steps, SGA in 32), both clearly beat random noise, and SGD-UAP ends ahead of SGA — each within
    3 of the 48 crops (0.0625) of its measured figure, at least 4 crops (0.08) apart (measured: 6)."""
    results = {}
    for algorithm in ("sga", "sgd_uap"):
        config = race_config(algorithm, "cpu", protocol="image_gradients")  # the equal-cost protocol
        assert config.max_image_gradients == RACE_BUDGET and config.augment == 8 and config.holdout_views == 4
        # the claim is on the last δ (keep="last"): the charts' ~20 intermediate evaluations are skipped here
        config = dataclasses.replace(config, eval_every=10_000)
        results[algorithm] = Run(config, model=lite0).run_to_end()
    for algorithm, result in results.items():
        spent = result.info["image_gradients"]
        steps = [h for h in result.history if h["kind"] == "step"]
        cosine = statistics.mean(h["grad_cosine"] for h in steps[1:])
        print(algorithm, result.evaluation.fooling_ratio, result.random_evaluation.fooling_ratio, result.steps, spent,
              cosine)
        assert result.reason == "budget" and RACE_BUDGET <= spent < RACE_BUDGET + 20
        assert result.evaluation.count == 48
        assert result.evaluation.fooling_ratio >= 2 * result.random_evaluation.fooling_ratio
        assert result.evaluation.fooling_ratio >= result.random_evaluation.fooling_ratio + 0.2
    assert results["sgd_uap"].steps == 63 and results["sga"].steps == 32
    sga, sgd_uap = (results[a].evaluation.fooling_ratio for a in ("sga", "sgd_uap"))
    assert sgd_uap == pytest.approx(0.56, abs=0.0625) and sga == pytest.approx(0.44, abs=0.0625), (sgd_uap, sga)
    assert sgd_uap - sga >= 0.08, (sgd_uap, sga)  # the documented order: SGD-UAP ahead at this budget
