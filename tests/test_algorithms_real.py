"""Each algorithm on a real model and real images: EfficientNet-Lite0 on ImageNet samples (fit 100 /
hold out 100, eps 10/255 L∞). Settings are cut down (fewer epochs, small batches, for UAP a smaller input) so
each test takes about two minutes on 2 CPU cores; the budget must hold and the same seed must give the same δ.

SGA and SGD-UAP: the held-out fooling ratio must clearly beat random ±eps noise on the same images.

UAP cannot do that from 100 fit images, and this is the method, not a bug: it adds up *minimal* DeepFool
perturbations, so after a pass over 100 images ‖δ‖₂ ≈ 0.9 (at 128 px) while random ±eps noise has ‖·‖₂ ≈ 8.7;
measured, its held-out fooling ratio is 0.08 after one pass and 0.10 after three, against 0.27 for the
noise (and 0.06–0.10 for random noise of δ's own L2 norm). The paper accumulates over 10,000 images. So on
ImageNet UAP is held to what it does promise — it fools the images it visited, far more than random noise of
its own size — and its held-out claim is tested on CIFAR-10, where 500 fit images run in under a minute.
"""

import pytest
import torch

from uap_core.images import load_images
from uap_core.report import perturbation_report
from uap_core.run import Run, RunConfig

EPS = 10 / 255

CASES = {
    # SGA: 4 epochs of B 10, m 10, K 4 → 40 aggregated sign steps (1,600 image-gradients)
    "sga": dict(epochs=4, params={"batch_size": 10, "minibatch_size": 10, "inner_passes": 4}, ratio=2.0),
    # SGD-UAP: 12 epochs of B 10 → 120 sign steps (1,200 image-gradients)
    "sgd_uap": dict(epochs=12, params={"batch_size": 10}, ratio=1.5),
}


@pytest.fixture(scope="module")
def images_224(imagenet_200, lite0):
    return load_images(imagenet_200, 224, 256, list(lite0.spec.class_names))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(CASES))
def test_beats_random_noise_on_held_out_images(algorithm, lite0, imagenet_200, images_224):
    case = dict(CASES[algorithm])
    ratio = case.pop("ratio")
    config = RunConfig(model="efficientnet_lite0", algorithm=algorithm, eps=EPS, norm="linf", fit=100, holdout=100,
                       seed=0, device="cpu", eval_every=10_000, **case)
    result = Run(config, model=lite0, images=images_224).run_to_end()
    summary = result.summary()
    print(algorithm, {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                              "dominant_share", "seconds", "steps")})
    assert result.evaluation.count == 100 and summary["fit_images"] == 100
    assert result.delta.abs().max().item() <= EPS + 1e-7
    assert summary["fooling_ratio"] >= ratio * summary["random_fooling_ratio"], summary
    assert summary["fooling_ratio"] >= summary["random_fooling_ratio"] + 0.08, summary
    _same_seed_same_delta(config, lite0, images_224)


def _same_seed_same_delta(config, model, images):
    """Replay the first two steps twice with the same seed: the same δ, bit for bit (on 20 fit / 10 held-out
    images: determinism does not need the full split, and the clean-label passes stay short)."""
    short = RunConfig(**{**config.__dict__, "epochs": 1, "max_seconds": None, "fit": 20, "holdout": 10})
    first = Run(short, model=model, images=images)
    second = Run(short, model=model, images=images)
    for run in (first, second):
        for event in run.events():
            if event.kind == "step" and event.step == 2:
                run.stop()
    assert torch.equal(first.result.last_delta, second.result.last_delta)
    assert first.result.last_delta.abs().max() > 0


@pytest.mark.slow
def test_uap_fools_the_images_it_visited_on_imagenet(lite0, imagenet_200):
    """One pass of UAP over 100 ImageNet images (128 px): within budget, reproducible, and it fools the fit
    images far more than random noise of its own L2 norm does (see the module docstring for why not held-out)."""
    images = load_images(imagenet_200, 128, 146, list(lite0.spec.class_names))
    config = RunConfig(model="efficientnet_lite0", algorithm="uap", eps=EPS, norm="linf", fit=100, holdout=100,
                       seed=0, device="cpu", eval_every=10_000, input_size=128, epochs=1,
                       params={"images_per_step": 10})
    run = Run(config, model=lite0, images=images)
    result = run.run_to_end()
    print("uap", {k: result.summary()[k] for k in ("fooling_ratio", "random_fooling_ratio", "l2", "seconds")})
    assert result.delta.abs().max().item() <= EPS + 1e-7
    on_fit = perturbation_report(lite0, run.fit_set, result.delta, norm="l2", seed=0)
    print("uap on its fit images", on_fit.fooling_ratio, "random noise of its L2 norm", on_fit.random_fooling_ratio)
    assert on_fit.fooling_ratio >= 2 * on_fit.random_fooling_ratio and on_fit.fooling_ratio >= 0.15, on_fit.as_dict()
    _same_seed_same_delta(config, lite0, images)


@pytest.mark.slow
def test_uap_beats_random_noise_on_held_out_cifar(cifar_npz):
    """UAP's held-out claim where enough fit images are cheap: CIFAR-10 ResNet-20, 500 fit / 1,500 held out,
    eps 8/255 L∞, one pass."""
    config = RunConfig(model="cifar_resnet20", algorithm="uap", eps=8 / 255, norm="linf", images=str(cifar_npz),
                       fit=500, holdout=1500, seed=0, device="cpu", eval_every=10_000, epochs=1,
                       params={"images_per_step": 100})
    result = Run(config).run_to_end()
    summary = result.summary()
    print("uap cifar", {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                                "dominant_share", "seconds")})
    assert result.delta.abs().max().item() <= 8 / 255 + 1e-7 and summary["heldout_images"] == 1500
    assert summary["fooling_ratio"] >= 1.5 * summary["random_fooling_ratio"], summary
