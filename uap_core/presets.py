"""Ready-made run configurations: the classroom demo (offline, 2 CPU cores, under a minute)."""

from __future__ import annotations

from .run import RunConfig


def demo_config(device: str = "auto") -> RunConfig:
    """EfficientNet-Lite0, SGA, eps 10/255 L∞, the embedded sample images (they ship with pip packages).

    The paper's B = 250 would make one update per epoch on a couple of dozen images, so the demo uses small
    outer batches (B = 5 of m = 5): many aggregated sign steps, finished within a minute on 2 CPU cores.
    """
    return RunConfig(model="efficientnet_lite0", algorithm="sga", eps=10 / 255, norm="linf", images="samples",
                     seed=0, device=device, epochs=6, eval_every=3,
                     params={"batch_size": 5, "minibatch_size": 5, "inner_passes": 4}, max_seconds=55)
