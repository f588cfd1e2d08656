"""Each algorithm on a real model and real images: EfficientNet-Lite0 on ImageNet samples (fit 100 /
hold out 100, eps 10/255 L∞). Settings are cut down (fewer epochs, small batches, for UAP a smaller input) so
each test takes about two minutes on 2 CPU cores; the held-out fooling ratio must clearly beat random noise of
the same norm on the same images, the budget must hold, and the same seed must give the same δ."""

import pytest
import torch

from uap_core.images import load_images
from uap_core.run import Run, RunConfig

EPS = 10 / 255

CASES = {
    # SGA: 4 epochs of B 10, m 10, K 4 → 40 aggregated sign steps (1,600 image-gradients)
    "sga": dict(epochs=4, params={"batch_size": 10, "minibatch_size": 10, "inner_passes": 4}, ratio=2.0),
    # SGD-UAP: 16 epochs of B 10 → 160 sign steps (1,600 image-gradients)
    "sgd_uap": dict(epochs=16, params={"batch_size": 10}, ratio=1.5),
    # UAP: two passes of DeepFool accumulation
    "uap": dict(epochs=2, params={"images_per_step": 10}, ratio=1.3),
}


@pytest.fixture(scope="module")
def images_224(imagenet_200, lite0):
    return load_images(imagenet_200, 224, 256, list(lite0.spec.class_names))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(CASES))
def test_beats_random_noise_on_held_out_images(algorithm, lite0, imagenet_200, images_224):
    case = dict(CASES[algorithm])
    ratio = case.pop("ratio")
    input_size = case.pop("input_size", None)
    images = images_224 if input_size is None else load_images(imagenet_200, input_size,
                                                                round(input_size * 256 / 224))
    config = RunConfig(model="efficientnet_lite0", algorithm=algorithm, eps=EPS, norm="linf", fit=100, holdout=100,
                       seed=0, device="cpu", eval_every=10_000, input_size=input_size, **case)
    result = Run(config, model=lite0, images=images).run_to_end()
    summary = result.summary()
    print(algorithm, {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                              "dominant_share", "seconds", "steps")})
    assert result.evaluation.count == 100 and summary["fit_images"] == 100
    assert result.delta.abs().max().item() <= EPS + 1e-7
    assert summary["fooling_ratio"] >= ratio * summary["random_fooling_ratio"], summary
    assert summary["fooling_ratio"] >= summary["random_fooling_ratio"] + 0.08, summary
    # the same seed gives the same δ: replay the first steps
    short = RunConfig(**{**config.__dict__, "epochs": 1, "max_seconds": None})
    first = Run(short, model=lite0, images=images)
    second = Run(short, model=lite0, images=images)
    for run in (first, second):
        for event in run.events():
            if event.kind == "step" and event.step == 2:
                run.stop()
    assert torch.equal(first.result.last_delta, second.result.last_delta)
    assert first.result.last_delta.abs().max() > 0
