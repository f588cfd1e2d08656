"""Cos-UAP — Zhang, Benz, Karjauv, Kweon, "Data-free Universal Adversarial Perturbation and Black-box Attack",
ICCV 2021. No official code was released, so this follows the paper's equations.

Label-free: δ should make the logit vector of every perturbed image point away from that image's clean logit
vector. Adam on δ (init 0), clipped into the eps ball after every step, as DF-UAP (the same authors' framework):

    δ = 0; opt = Adam([δ], lr)
    repeat:
        X = next batch of fit images
        L = mean_x cos(f(clamp(x + δ, 0, 1)), f(x).detach())     # cosine between logit vectors
        opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)

No label enters the loss (so no targeted version: ``supports_targeted = False``); "fooled" is still counted as
the top-1 label changing against the clean prediction. The clean logits f(x) are computed once by the run
(``AttackSetup.clean_logits``) and handed to :meth:`loss_per_image`.

δ starts at 0, as in DF-UAP. There every cosine is 1, its maximum, so the gradient at δ = 0 is zero up to rounding
(~1e-8): Adam's first step, which normalises the gradient, follows that rounding noise (a step of up to lr per
entry), and from then on the true gradient takes over. The same seed gives the same δ on the same device and code
path, but eager and compiled runs (or CPU and CUDA) round differently and so part after the first step (measured:
max |Δδ| 0.022 after 3 steps on CIFAR ResNet-20, where DF-UAP's differ by 6e-8). The start itself costs nothing:
CIFAR-10 ResNet-20, eps 8/255, fit 500, 32 steps, held-out fooling ratio for seeds 0/1/2 from zero 0.780 / 0.762 /
0.790, from a seeded uniform ±eps start 0.778 / 0.758 / 0.764.

Not implemented here: the paper's *data-free* variant, which feeds artificial "jigsaw" images (random
piecewise-constant patches) in place of real images; this class fits on the real (or proxy) fit images it is given.

Defaults: the paper's learning rate, batch size and iteration count could not be confirmed from the sources at
hand (no official code; the paper text was not in the stored pages), so they are DF-UAP's official ones: batch 32,
Adam lr 0.005 (PyTorch's other Adam defaults), and 6 epochs (≈ 2,000 iterations on 10,000 images). The reported
"loss" is the ascended quantity −L (mean negative cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import param
from .adam import AdamUAPAlgorithm


@dataclass
class CosUAPParams:
    batch_size: int = param(32, "Images per Adam step (DF-UAP's official 32; the paper's not confirmed).", 1,
                            100_000)
    lr: float = param(0.005, "Adam learning rate in pixel units (DF-UAP's official 0.005).", 1e-6, 1.0)


class CosUAP(AdamUAPAlgorithm):
    name = "cos_uap"
    title = "Cos-UAP (cosine to the clean logits, Zhang et al. 2021)"
    summary = "Adam on δ minimising the cosine between perturbed and clean logit vectors; needs no labels."
    paper = ("Zhang, Benz, Karjauv, Kweon, Data-free Universal Adversarial Perturbation and Black-box Attack, "
             "ICCV 2021")
    differs = ("No official code: the paper's equations; lr, batch and iterations from DF-UAP; the data-free jigsaw "
               "variant is not implemented")
    family = "data-driven"
    supports_targeted = False
    uses_clean_logits = True
    default_epochs = 6  # as DF-UAP: 6 · ceil(10,000 / 32) = 1,878 iterations
    Params = CosUAPParams

    def loss_per_image(self, logits: torch.Tensor, clean_labels: torch.Tensor,
                       clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """−cos(f(clamp(x + δ)), f(x)) per image (n,) fp32. logits, clean_logits: (n, C); clean_labels unused."""
        if clean_logits is None:
            raise ValueError("Cos-UAP needs the clean logits (AttackSetup.clean_logits)")
        return -F.cosine_similarity(logits.float(), clean_logits.detach().float(), dim=1)
