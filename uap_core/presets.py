"""Ready-made run configurations: the classroom demo (offline, 2 CPU cores, under a minute)."""

from __future__ import annotations

from .run import RunConfig


def demo_config(device: str = "auto") -> RunConfig:
    """EfficientNet-Lite0, SGA, eps 10/255 L∞, the embedded sample images (they ship with pip packages).

    The 25 embedded photos split into 13 to fit and 12 held out. Fitted to the 13 photos themselves, any
    method fools all of them within seconds and no held-out photo beyond random noise (measured: 1 of 12, the
    same as ±eps noise), which shows overfitting, not universality. So the demo fits on 8 random crop/flip views
    of each fit photo (104 images) and uses small SGA batches (B = 10, m = 5, K = 2: many aggregated sign
    steps). Measured on 2 CPU cores it fools 2 of the 12 held-out photos after about 30 s, against 1 for
    random noise, and ends within a minute: 3 epochs or the 45 s limit on the steps, whichever comes first,
    plus the final evaluation.
    """
    return RunConfig(model="efficientnet_lite0", algorithm="sga", eps=10 / 255, norm="linf", images="samples",
                     seed=0, device=device, epochs=3, eval_every=4, augment=8, max_seconds=45,
                     params={"batch_size": 10, "minibatch_size": 5, "inner_passes": 2})
