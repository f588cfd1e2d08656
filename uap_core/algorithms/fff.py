"""FFF — Mopuri, Garg, Babu, "Fast Feature Fool: A data independent approach to universal adversarial
perturbations", BMVC 2017. Official code: val-iisc/fast-feature-fool (TensorFlow, ``train.py``, ``misc/losses.py``).

GD-UAP's predecessor: feed δ alone and make every conv layer fire — the mean absolute activation, not its energy:

    δ ~ U(−eps, eps); opt = Adam([δ], lr)
    for t in 1..iterations:
        L = −Σ_ℓ log(mean |a_ℓ(δ)|)                  # a_ℓ: conv layer ℓ's output for δ alone
        opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)
        if t is a multiple of 300: δ = δ / 2          # the official rescaling ("to lesser range")

Defaults from the official code: δ init uniform in ±eps, Adam lr 0.1 on the 0–255 scale (= 0.1/255 in pixel
units here; see :mod:`.gd_uap`), halving every 300 iterations (FFF's own rule; the saturation rule came with
GD-UAP and is not used here).

Where and why we differ: the official run measures the fooling ratio on 1,000 real validation images every 300
iterations and stops after 5 checks without improvement (at most 10,000 iterations); data-free, we run a fixed
number of ``iterations`` and keep the last δ. The official code takes each VGG conv layer after its ReLU; we take the
raw ``nn.Conv2d`` outputs (see :mod:`.data_free`). δ alone is fed on the model's zero image (its normalisation
mean), so the network sees δ / std, as the official network sees δ in its mean-subtracted input space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from .data_free import DataFreeAdamUAP, DataFreeParams


@dataclass
class FFFParams(DataFreeParams):
    halve_every: int = param(300, "Halve δ every this many iterations (official 300; 0 = never).", 0, 1_000_000)


class FFF(DataFreeAdamUAP):
    name = "fff"
    title = "FFF (Fast Feature Fool, Mopuri et al. 2017)"
    summary = "Adam on δ alone maximising the mean absolute activation of every conv layer; no data needed."
    paper = ("Mopuri, Garg, Babu, Fast Feature Fool: A data independent approach to universal adversarial "
             "perturbations, BMVC 2017")
    differs = ("Fixed iteration count, no validation early stop (needs real images); lr 0.1/255 = the TF code's 0.1 "
               "on the 0–255 scale; raw conv outputs (TF: after ReLU); δ alone fed on the model's normalisation mean")
    Params = FFFParams
    saturation_rule = False  # FFF halves on a fixed schedule instead

    def initial_delta(self) -> torch.Tensor:
        return self.uniform_delta()

    def objective(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """Σ_ℓ log(mean |a_ℓ|) (the official ``activations`` loss), ascended."""
        return sum(torch.log(a.abs().mean()) for a in activations)

    def after_update(self) -> None:
        """δ ← δ / 2 after update i (counting from 0) when i is a non-zero multiple of ``halve_every`` — the
        official ``if i % 300 == 0 and i != 0``: after the 301st, 601st, … update."""
        super().after_update()
        every, i = int(self.params.halve_every), self.iteration - 1
        if every and i and i % every == 0:
            with torch.no_grad():
                self.delta.mul_(0.5)
            self.rescales += 1
