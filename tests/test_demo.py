"""The classroom demo's settings (uap_core.presets.demo_config) on the real model and the embedded photos: the
perturbation it fits must clearly beat random ±eps noise on held-out photos it never saw, and on 200 real
ImageNet validation images. Run for a fixed number of steps (2 epochs = 22 steps, about as many as the demo's
45 s allow on 2 cores) instead of the time limit, so the result does not depend on the machine's speed."""

import dataclasses

import torch

from uap_core import metrics
from uap_core.evaluation import predict_labels
from uap_core.images import load_images
from uap_core.presets import demo_config
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
