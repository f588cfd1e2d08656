"""Ready-made run configurations: the classroom demo (offline, 2 CPU cores, under a minute) and the race."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .algorithms import ALGORITHMS
from .params import param
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


RACE_BUDGET = 600  # image-gradients per method under the equal-cost protocol: see race_config
RACE_EPOCHS = 3  # passes over the fit images per method under the paper's protocol: see race_config
PROTOCOLS = ("epochs", "image_gradients")
PROTOCOL_CAPTIONS = {
    "epochs": "Compared at equal epochs, the SGA paper's protocol: every method sees the same images the same number "
              "of times, so SGA spends K× more image-gradients (its inner steps) than SGD-UAP.",
    "image_gradients": "Compared at equal image-gradients (equal cost): a method with dearer steps, such as SGA with "
                       "its K inner passes, makes fewer of them.",
}


@dataclass
class RaceSettings:
    """How a race compares its methods (the page's form, the ``race`` command's options, their check)."""

    methods: list[str] = param(["sga", "sgd_uap"], "the methods to race, comma-separated", choices=tuple(ALGORITHMS),
                               form=False)
    protocol: str = param("epochs", "compare at equal epochs (the SGA paper's protocol: the same images, the same "
                                    "passes; SGA spends K× more image-gradients) or at equal image-gradients (the "
                                    "same cost)", choices=PROTOCOLS, label="Compare at",
                          choice_labels={"epochs": "equal epochs (the paper's protocol)",
                                         "image_gradients": "equal image-gradients (equal cost)"})
    device: str = param("auto", "cpu, cuda, mps or auto", form=False)


def race_config(algorithm: str, device: str = "auto", seed: int = 0, protocol: str = "epochs") -> RunConfig:
    """The classroom race: methods side by side on the demo's images.

    Every method gets the demo's setting — EfficientNet-Lite0, eps 10/255 L∞, the embedded photos (13 fit photos
    seen as 8 crops each, 12 held-out photos measured on 4 crops each), last δ kept, no compiling. SGA and SGD-UAP
    take the demo's small batches and step (B 10; SGA m 5, K 2; step 2/255); other methods take their paper
    defaults with batches of at most 10 images. ``protocol``:

    - "epochs" (the default, the SGA paper's protocol): RACE_EPOCHS passes over the fit images each, so every method
      sees the same images as often; SGA's steps cost K× more image-gradients (SGD-UAP 33 steps of 10, SGA 33 of
      20 at K 2);
    - "image_gradients": the same budget of RACE_BUDGET image-gradients (forward + backward passes over one image),
      so a method with dearer steps makes fewer of them. Measured on 2 cores (tests/test_demo.py): SGD-UAP 0.56
      and SGA 0.44 of the 48 held-out crops fooled, random noise 0.125: at this budget SGD-UAP's 63 sign steps
      carry δ further than SGA's 32 aggregated ones.
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
    budget = {"epochs": {"epochs": RACE_EPOCHS}, "image_gradients": {"max_image_gradients": RACE_BUDGET}}[protocol]
    return RunConfig(model="efficientnet_lite0", algorithm=algorithm, eps=10 / 255, norm="linf", images="samples",
                     seed=seed, device=device, augment=8, holdout_views=4, keep="last", compile="off",
                     params=params, **budget)


def race_entrant(config: RunConfig, protocol: str, epochs: int, budget: int) -> RunConfig:
    """A race entrant's configuration under ``protocol``: ``epochs`` passes and no budget (the paper's), or the
    budget of ``budget`` image-gradients and as many epochs as it takes (equal cost)."""
    if protocol == "epochs":
        return dataclasses.replace(config, epochs=epochs, max_image_gradients=None)
    return dataclasses.replace(config, epochs=None, max_image_gradients=budget)


def run_race(settings: RaceSettings, seeds: list[int],
             on_event: Callable[[str, int, object], None] | None = None) -> dict:
    """The classroom race (:func:`race_config`) from the command line: each method once per seed, one after
    another. Returns method → :class:`~uap_core.seeds.SeededResult`."""
    from .seeds import SeededRuns

    out = {}
    for method in settings.methods:
        config = race_config(method, settings.device, seeds[0], settings.protocol)
        out[method] = SeededRuns(config, seeds).run_to_end(
            (lambda seed, event, method=method: on_event(method, seed, event)) if on_event else None)
    return out
