"""Two ways to run every study, side by side: the papers' scale on CIFAR-10 (ResNet-20 on the CIFAR-10 test set,
downloaded once: 170 MB) and EfficientNet-Lite0 on images a user has (a folder, the embedded samples, an upload),
offline. A setup is a set of defaults over a study's Settings; the Studies page offers both, the CLI takes the same
values as options (``uap study images_needed --model efficientnet_lite0 --images FOLDER --holdout 12 …``).

The Lite0 defaults are sized for a small folder (every study fits 24 images: the 25 embedded samples, 20 of them
labelled, are enough except for ``finetune``, which needs labelled images: class sub-folders or ``<wnid>_*`` file
names) and for a CPU (a Lite0 image-gradient costs about 20 times a CIFAR ResNet-20's). How each study uses Lite0:

- ``transfer_ensembles`` needs several models of the same labels: EfficientNet-Lite0, -Lite1 and -Lite2 ship with
  the package (offline), so the surrogates are Lite0 and Lite1, the targets all three (no ensemble surrogate: an
  ensemble's members must share one input size, and the three take 224, 240 and 260 pixels);
- ``finetune`` fine-tunes Lite0 itself on the folder's labelled images (its train split), a few epochs;
- ``geometry`` computes DeepFool normals at d = 3·224·224 = 150,528 (the paper's own dimension), so the subspaces
  swept are small (k = 2, 5, 10 of 12 normals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..datasets import CIFAR10_TEST
from ..download import CIFAR10_BINARY

LITE0 = "efficientnet_lite0"


@dataclass(frozen=True)
class Setup:
    """name: the key; label: one line for a picker; images: the default source (None: the user picks one);
    overrides: study name → settings replacing that study's defaults."""

    name: str
    label: str
    images: str | None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


_LITE0_OVERRIDES: dict[str, dict[str, Any]] = {
    "images_needed": {"model": LITE0, "eps": 10 / 255, "methods": ["sgd_uap"], "fit_sizes": [2, 5, 10],
                      "seeds": [0], "holdout": 12, "min_steps": 10},
    "batch_stability": {"model": LITE0, "eps": 10 / 255, "fit": 12, "holdout": 12, "batch_sizes": [2, 6],
                        "sga_batch": 6, "sga_minibatches": [2], "inner_passes": 2, "budget": 120},
    "transfer_ensembles": {"surrogates": [LITE0, "efficientnet_lite1"],
                           "targets": [LITE0, "efficientnet_lite1", "efficientnet_lite2"], "methods": ["sgd_uap"],
                           "eps": 10 / 255, "fit": 12, "holdout": 12, "epochs": 5},
    "dominant_labels": {"model": LITE0, "eps": 10 / 255, "method": "sgd_uap", "fit": 12, "holdout": 12,
                        "epochs": 5, "batch_size": 6, "top_flows": 6},
    "geometry": {"model": LITE0, "normals": 12, "holdout": 12, "subspace_dims": [2, 5, 10], "draws": 5},
    "finetune": {"model": LITE0, "eps": 10 / 255, "train": 8, "fit": 8, "holdout": 8, "method": "sgd_uap",
                 "uap_epochs": 5, "uap_batch_size": 4, "pool": 2, "pool_fit": 4, "rounds": 1, "epochs": 2,
                 "train_batch": 8},
    "robustness": {"model": LITE0, "eps": 10 / 255, "method": "sgd_uap", "robust": ["jpeg", "rotation"], "fit": 12,
                   "holdout": 12, "epochs": 5,
                   "batch_size": 6, "jpeg_qualities": [95, 75, 50, 30], "rotations": [0.0, 5.0, 10.0, 15.0],
                   "scales": [0.8, 1.0, 1.2], "blur_sigmas": [0.0, 1.0, 2.0], "brightness": [0.6, 1.0, 1.4]},
}

SETUPS: dict[str, Setup] = {
    "cifar10": Setup("cifar10", f"CIFAR-10 (downloads {CIFAR10_BINARY.size_text} once)", CIFAR10_TEST),
    "lite0": Setup("lite0", "EfficientNet-Lite0 on your folder", None, _LITE0_OVERRIDES),
}


def setup_defaults(study: str, setup: str) -> dict[str, Any]:
    """The settings ``setup`` puts in place of study ``study``'s defaults (empty for the papers' CIFAR-10 scale)."""
    chosen = SETUPS[setup]
    values = dict(chosen.overrides.get(study, {}))
    if chosen.images is not None:
        values.setdefault("images", chosen.images)
    return values


__all__ = ["LITE0", "SETUPS", "Setup", "setup_defaults"]
