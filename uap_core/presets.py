"""Ready-made run configurations: the classroom demo (offline, 2 CPU cores, under a minute)."""

from __future__ import annotations

from .run import RunConfig


def demo_config(device: str = "auto") -> RunConfig:
    """EfficientNet-Lite0, SGA, eps 10/255 L∞, the embedded sample images (they ship with pip packages).

    The 25 embedded photos split into 13 to fit and 12 held out. Fitted to the 13 photos themselves, any method
    fools all of them within seconds and no held-out photo beyond random noise: overfitting, not universality.
    So the demo
    - fits on 8 random crop/flip views of each fit photo (104 images), with small SGA batches (B 10, m 5, K 2:
      many aggregated sign steps) and a step of 2/255 instead of the paper's 0.1·eps, so that δ reaches the
      budget within the ~25 steps a minute allows (at 1/255 no pixel of δ reached ±eps in 13 steps);
    - measures on 4 random views of each held-out photo (48 images never seen while fitting): a fooling ratio
      in steps of 2 %, not 8 %;
    - keeps the last δ, which saves the fit-set evaluations (a quarter of the time);
    - never compiles the step, not even on a GPU: compiling takes longer than the whole demo.
    Measured on 2 CPU cores (``python -m uap_core generate`` with these settings, or ``Run(demo_config("cpu"))``):
    25 steps in the 45 s limit, held-out fooling ratio 0.38 against 0.12 for random ±eps noise, 52 s in all
    including start-up; the same δ fools 0.36 of 200 real ImageNet validation images (random noise: 0.18).
    """
    return RunConfig(model="efficientnet_lite0", algorithm="sga", eps=10 / 255, norm="linf", images="samples",
                     seed=0, device=device, epochs=3, eval_every=4, augment=8, holdout_views=4, keep="last",
                     compile="off", max_seconds=45,
                     params={"batch_size": 10, "minibatch_size": 5, "inner_passes": 2, "step_size": 2 / 255})


RACE_BUDGET = 600  # image-gradients per method: see race_config


def race_config(algorithm: str, device: str = "auto", seed: int = 0) -> RunConfig:
    """The classroom race: methods side by side on the demo's images at an equal cost.

    Every method gets the demo's setting — EfficientNet-Lite0, eps 10/255 L∞, the embedded photos (13 fit photos
    seen as 8 crops each, 12 held-out photos measured on 4 crops each), last δ kept, no compiling — and the same
    budget of RACE_BUDGET image-gradients (forward + backward passes over one image), so a method with dearer
    steps makes fewer of them: the charts compare methods on the image-gradient axis. SGA and SGD-UAP take the
    demo's small batches and step (B 10; SGA m 5, K 2; step 2/255); other methods take their paper defaults
    with batches of at most 10 images. Measured on 2 cores (tests/test_demo.py): SGD-UAP 0.56 and SGA 0.44 of
    the 48 held-out crops fooled, random noise 0.125: at this budget SGD-UAP's 63 sign steps carry δ further than
    SGA's 32 aggregated ones.
    """
    params = {
        "sga": {"batch_size": 10, "minibatch_size": 5, "inner_passes": 2, "step_size": 2 / 255},
        "sgd_uap": {"batch_size": 10, "step_size": 2 / 255},
    }.get(algorithm)
    if params is None:
        from .algorithms import get_algorithm
        from .params import describe

        fields = {f["name"]: f for f in describe(get_algorithm(algorithm).Params)}
        params = {"batch_size": min(10, fields["batch_size"]["default"])} if "batch_size" in fields else {}
    return RunConfig(model="efficientnet_lite0", algorithm=algorithm, eps=10 / 255, norm="linf", images="samples",
                     seed=seed, device=device, augment=8, holdout_views=4, keep="last", compile="off",
                     max_image_gradients=RACE_BUDGET, params=params)
