"""GD-UAP — Mopuri, Ganeshan, Babu, "Generalizable Data-free Objective for Crafting Universal Adversarial
Perturbations", TPAMI 2018. Official code: val-iisc/GD-UAP (TensorFlow, ``classification/train.py``,
``utils/losses.py``); PyTorch port: psandovalsegura/pytorch-gd-uap (``gduap.py``).

Make δ excite every conv layer as much as possible — no label, no loss on the output:

    δ ~ U(−eps, eps); opt = Adam([δ], lr)
    for t in 1..iterations:
        X = 0 (prior "none": δ alone) | Gaussian noise images (prior "range") | B fit images (prior "data")
        L = −Σ_ℓ log(‖a_ℓ(X + δ)‖²₂ / 2)            # a_ℓ: conv layer ℓ's output over the whole batch
        opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)
        if saturation > 0.5 and it changed by < 1e-5 since the last step: δ = δ / 2

Defaults from the official code: δ init uniform in ±eps; Adam (β 0.9/0.999); batch 25 for the range and data
priors; prior "no_data" (here "none"); saturation rule as in :mod:`.data_free`.

Where and why we differ:

- Learning rate. The official TF code runs Adam at lr 0.1 on δ in 0–255 units with eps = 10: a step moves an
  entry by at most ~1 % of eps. In pixel units that is lr = 0.1/255 ≈ 3.9e-4 (at eps 10/255), the default here.
  The PyTorch ports keep ``lr=0.1`` with δ in [0, 1] units, 2.5× eps per step, so every step saturates δ and the
  optimisation becomes a sign step followed by the halving rule.
- Stopping. The official run measures a validation fooling ratio on 1,000 real images every 200–400 iterations
  and stops after 10 checks without improvement (at most 40,000 iterations). A data-free run has no real images,
  so it runs a fixed number of ``iterations`` and keeps the last δ.
- Range prior. The official code draws, every step, 25 random augmentations (flip, rescale 0.75–1.5, rotation
  ±10°, Gaussian blur, crop) of one fixed 500×500 Gaussian noise image (mean: the ILSVRC mean; sd 52, 58, 62 in
  B, G, R). Here every step draws fresh Gaussian noise images with the same per-channel sd around the model's
  zero image (no augmentation: fresh i.i.d. noise is what crops of i.i.d. noise give, without the blur).
- Data prior: batches of ``batch_size`` fit images drawn from successive shuffles (official: a random window of
  25 consecutive files of the image list, augmented as above; no augmentation here).
- Activations: raw ``nn.Conv2d`` outputs (as the PyTorch port; the TF code takes them after ReLU) — see
  :mod:`.data_free`. δ alone is fed on the model's zero image (its normalisation mean), see :mod:`.data_free`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from .data_free import DataFreeAdamUAP, DataFreeParams, log_l2
from .priors import range_images

PRIORS = ("none", "range", "data")


@dataclass
class GDUAPParams(DataFreeParams):
    iterations: int = param(2000, "Adam updates of δ per epoch (a run is one epoch by default; the official run "
                            "stops on a validation fooling ratio of real images instead, typically after a few "
                            "thousand).", 1, 1_000_000)
    prior: str = param("none", "What δ is added to: 'none' (δ alone, the official default), 'range' (Gaussian "
                       "noise images) or 'data' (the fit images: then GD-UAP is not data-free).",
                       choices=PRIORS)
    batch_size: int = param(25, "Images per step with the range or data prior (official 25).", 1, 10_000)


class GDUAP(DataFreeAdamUAP):
    name = "gd_uap"
    title = "GD-UAP (generalizable data-free objective, Mopuri et al. 2018)"
    summary = "Adam on δ maximising the log-energy of every conv layer's activations; no data needed."
    paper = ("Mopuri, Ganeshan, Babu, Generalizable Data-free Objective for Crafting Universal Adversarial "
             "Perturbations, TPAMI 2018")
    differs = ("Fixed iteration count, no validation early stop (needs real images); lr 0.1/255 = the TF code's 0.1 "
               "on the 0–255 scale; raw conv outputs (TF: after ReLU); range prior = fresh Gaussian noise, no "
               "augmentation; δ alone fed on the model's normalisation mean")
    Params = GDUAPParams

    @classmethod
    def is_data_free(cls, params=None) -> bool:
        """Data-free unless the prior is "data" (then the run hands it the fit images)."""
        return params is None or params.prior != "data"

    def initial_delta(self) -> torch.Tensor:
        return self.uniform_delta()

    def batch_size(self) -> int:
        if self.params.prior == "none":
            return 1
        if self.params.prior == "data":
            return min(int(self.params.batch_size), self.num_images)
        return int(self.params.batch_size)

    def image_gradients_per_step(self) -> int:
        return self.batch_size()

    def epoch_batches(self) -> list[torch.Tensor]:
        """Prior "data": ``iterations`` batches of fit-image indices from successive shuffles of the fit images;
        otherwise dummy batches."""
        if self.params.prior != "data":
            return super().epoch_batches()
        need, size = self.steps_per_epoch() * self.batch_size(), self.batch_size()
        shuffles = [self.permutation(self.num_images) for _ in range(-(-need // self.num_images))]
        return list(torch.cat(shuffles)[:need].split(size))

    def prior_images(self, indices: torch.Tensor) -> torch.Tensor | None:
        if self.params.prior == "range":
            mean = self.zero_image().flatten().tolist()
            return range_images(self.batch_size(), self.shape, mean, self.setup.generator, self.device)
        if self.params.prior == "data":
            return self.images(indices)
        return None

    def objective(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """Σ_ℓ log(‖a_ℓ‖²₂ / 2) (the official ``l2_all``), ascended."""
        return sum(log_l2(a) for a in activations)

    def fooled_in_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """With the data prior the fit images have clean labels: count the batch's fooled images."""
        if self.params.prior == "data" and self.last_logits is not None:
            return self.fooled(self.last_logits.detach(), self.setup.clean_labels[indices]).float()
        return super().fooled_in_batch(indices)
