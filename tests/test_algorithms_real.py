"""Each algorithm on a real model and real images, within budget, the same seed giving the same δ.

SGA and SGD-UAP: on CIFAR-10 ResNet-20 (fit 500 / hold out 1,000, eps 8/255 L∞, about 4,000–5,000
image-gradients: under half a minute each on 2 CPU cores) the held-out fooling ratio must clearly beat random
±eps noise on the same images. Their ImageNet claim on EfficientNet-Lite0 is held elsewhere at full scale: the
Home demo (tests/test_demo.py, SGA on the embedded photos and 200 ImageNet validation images) and the shipped zoo
(tests/test_zoo.py re-measures the Lite0 SGA perturbation on its recorded held-out photos).

UAP on Lite0 and ImageNet samples (fit 50, 128 px, one pass) cannot beat random noise on held-out images, and this
is the method, not a bug: it adds up *minimal* DeepFool perturbations, so after a pass over 100 images
‖δ‖₂ ≈ 0.9 (at 128 px) while random ±eps noise has ‖·‖₂ ≈ 8.7; measured, its held-out fooling ratio is 0.08 after
one pass and 0.10 after three, against 0.27 for the noise (and 0.06–0.10 for random noise of δ's own L2 norm).
The paper accumulates over 10,000 images. So on ImageNet UAP is held to what it does promise — it fools the
images it visited, far more than random noise of its own size (measured 0.22 against 0.06 on its 50 fit
images) — and its held-out claim is tested on CIFAR-10, where 300 fit images take under a minute.
"""

import pytest
import torch

from uap_core.images import load_images
from uap_core.report import perturbation_report
from uap_core.run import Run, RunConfig

EPS = 10 / 255
CIFAR_EPS = 8 / 255

CASES = {
    # SGA: 2 epochs of B 100, m 10, K 4 → 10 aggregated sign steps (4,000 image-gradients). Measured 0.55
    # against 0.29 for random noise.
    "sga": dict(epochs=2, params={"batch_size": 100, "minibatch_size": 10, "inner_passes": 4}),
    # SGD-UAP: 10 epochs of B 25 → 200 sign steps (5,000 image-gradients). Measured 0.78 against 0.29.
    "sgd_uap": dict(epochs=10, params={"batch_size": 25}),
}


@pytest.fixture(scope="module")
def cifar_images(cifar_npz):
    from uap_core.models import load_model
    from uap_core.transfer import images_for

    model = load_model("cifar_resnet20", "cpu")
    return model, images_for(model, str(cifar_npz))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(CASES))
def test_beats_random_noise_on_held_out_images(algorithm, cifar_npz, cifar_images):
    model, images = cifar_images
    config = RunConfig(model="cifar_resnet20", algorithm=algorithm, eps=CIFAR_EPS, norm="linf", images=str(cifar_npz),
                       fit=500, holdout=1000, seed=0, device="cpu", eval_every=10_000, **CASES[algorithm])
    result = Run(config, model=model, images=images).run_to_end()
    summary = result.summary()
    print(algorithm, {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                              "dominant_share", "seconds", "steps")})
    assert result.evaluation.count == 1000 and summary["fit_images"] == 500
    assert result.delta.abs().max().item() <= CIFAR_EPS + 1e-7
    assert summary["fooling_ratio"] >= 1.5 * summary["random_fooling_ratio"], summary
    assert summary["fooling_ratio"] >= summary["random_fooling_ratio"] + 0.15, summary
    _same_seed_same_delta(config, model, images)


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
    """One pass of UAP over 50 ImageNet images (128 px): within budget, and it fools the fit images far more than
    random noise of its own L2 norm does (see the module docstring for why not held-out; its determinism is checked
    on CIFAR-10 below)."""
    images = load_images(imagenet_200, 128, 146, list(lite0.spec.class_names))
    config = RunConfig(model="efficientnet_lite0", algorithm="uap", eps=EPS, norm="linf", fit=50, holdout=50,
                       seed=0, device="cpu", eval_every=10_000, input_size=128, epochs=1,
                       params={"images_per_step": 10})
    run = Run(config, model=lite0, images=images)
    result = run.run_to_end()
    print("uap", {k: result.summary()[k] for k in ("fooling_ratio", "random_fooling_ratio", "l2", "seconds")})
    assert result.delta.abs().max().item() <= EPS + 1e-7
    on_fit = perturbation_report(lite0, run.fit_set, result.delta, norm="l2", seed=0)
    print("uap on its fit images", on_fit.fooling_ratio, "random noise of its L2 norm", on_fit.random_fooling_ratio)
    assert on_fit.fooling_ratio >= 2 * on_fit.random_fooling_ratio and on_fit.fooling_ratio >= 0.15, on_fit.as_dict()


@pytest.mark.slow
def test_uap_beats_random_noise_on_held_out_cifar(cifar_npz, cifar_images):
    """UAP's held-out claim where enough fit images are cheap: CIFAR-10 ResNet-20, 300 fit / 1,000 held out,
    eps 8/255 L∞, one pass (measured 0.54 against 0.29 for random noise)."""
    config = RunConfig(model="cifar_resnet20", algorithm="uap", eps=8 / 255, norm="linf", images=str(cifar_npz),
                       fit=300, holdout=1000, seed=0, device="cpu", eval_every=10_000, epochs=1,
                       params={"images_per_step": 100})
    model, images = cifar_images
    result = Run(config, model=model, images=images).run_to_end()
    summary = result.summary()
    print("uap cifar", {k: summary[k] for k in ("fooling_ratio", "random_fooling_ratio", "dominant_name",
                                                "dominant_share", "seconds")})
    assert result.delta.abs().max().item() <= 8 / 255 + 1e-7 and summary["heldout_images"] == 1000
    assert summary["fooling_ratio"] >= 1.5 * summary["random_fooling_ratio"], summary
    _same_seed_same_delta(config, model, images)
