"""TRM-UAP — Liu, Feng, Wang, Yang, Ming, "TRM-UAP: Enhancing the Transferability of Data-Free Universal
Adversarial Perturbation via Truncated Ratio Maximization", ICCV 2023. Official code: RandolphCarter0/TRMUAP
(``trmuap.py``, ``strategy.py``, ``functions.py``, ``train.py``).

GD-UAP's recipe with a different objective, on the *first* layers only: raise the positive activations and
suppress the negative ones (maximise their ratio) in the shallow, model-generic layers:

    δ ~ U(−eps, eps); opt = Adam([δ], lr)
    for t in 1..iterations:
        X = n_t artificial images (Gaussian or jigsaw; n_t and their parameters follow the curriculum)
        a_1..a_K = the first conv layers' outputs for clamp(X + δ, 0, 1)       # forward stops after layer K
        P = first ⌊p_rate · #conv⌋ layers; N = first ⌊n_rate · #conv⌋ layers  (at least one each)
        L = λ Σ_{ℓ∈N} log(‖min(a_ℓ, 0)‖₂ / 2) − Σ_{ℓ∈P} log(‖max(a_ℓ, 0)‖²₂ / 2)
        opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)
        saturation rule (GD-UAP): if saturation > 0.5 and changed by < 1e-5: δ = δ / 2

Curriculum (official ``strategy.py``; :mod:`.priors`): Gaussian prior — images around the model's zero image with
per-channel sd (std + 20, std + 10, std)/255 (R, G, B), std 10 → 127 growing by 10 every 400 iterations; jigsaw
prior — ``cuts`` random cuts per axis, 1 → 7 growing by 1 every 600 iterations until 4,200; the prior batch starts
at 1 image and doubles at iterations 1,600, 2,400 and 3,200 (Gaussian) or 1,600 and 3,200 (jigsaw). A 1e-9 inside
each log keeps an all-zero part finite (official).

Defaults from the official code: Adam (lr: see below), λ = 1, prior "gauss" (``train.py``), p_rate 0.8 and
n_rate 0.7 (the published VGG-16 set-up; ``train.py``'s argparse default for n_rate is 0.8), prior batch 1, the
curriculum above (the generic ``curriculum_strategy_gauss`` / ``curriculum_strategy_jigsaw``; the code's
ResNet-152 and GoogLeNet jigsaw schedules are not reproduced).

Where and why we differ:

- The negative part. The paper takes neg(a) = min(a, 0); the released code computes its "negative" term with the
  same ``a > 0`` mask as the positive one (so for λ = 1 it only re-weights the positive term). ``negative="paper"``
  (default) follows the paper; ``negative="code"`` reproduces the released code.
- Learning rate: 0.1/255 in pixel units, GD-UAP's official step size (its TF code: 0.1 on the 0–255 scale). The
  TRM code keeps ``lr=0.1`` with δ in [0, 1] units — 2.5× eps per step, so every step saturates δ.
- Stopping: the official run checks a validation fooling ratio on real images every 200–400 iterations (patience
  5, at most 10,000 iterations); data-free, we run a fixed number of ``iterations`` and keep the last δ.
- Input space: the official code feeds δ + prior straight into a torchvision model without its normalisation (the
  Gaussian images mean-subtracted, the jigsaw images in [0, 1]). Here the priors are pixel images — Gaussian around
  the model's zero image (its normalisation mean, as mean-subtracted noise is), jigsaw images as they are — and
  the model normalises clamp(X + δ, 0, 1) itself.
- The official Gaussian images are also randomly augmented (flip, rescale, rotation, blur, crop: GD-UAP's
  ``randomizer``); ours are fresh noise without augmentation. The jigsaw median filter's disk (radius 5 at 224 px)
  is scaled with the image size (radius 1 at 32 px).
- Activations: raw ``nn.Conv2d`` outputs, as the official code. "First layers" are the first conv modules in
  registration order (the forward order of sequential networks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ParameterError
from ..params import param
from .activations import conv_layers
from .data_free import DataFreeAdamUAP, DataFreeParams, log_l2, truncate
from .priors import gaussian_images, jigsaw_images, trm_gauss_curriculum, trm_jigsaw_curriculum

TINY = 1e-9  # official: inside every log


@dataclass
class TRMUAPParams(DataFreeParams):
    lr: float = param(0.1 / 255, "Adam learning rate in pixel units (GD-UAP's official 0.1 on the 0–255 scale).",
                      1e-7, 1.0)
    prior: str = param("gauss", "Artificial images δ is added to: 'gauss' (Gaussian noise, the official default), "
                       "'jigsaw' (random colour pieces) or 'none' (δ alone).", choices=("gauss", "jigsaw", "none"))
    p_rate: float = param(0.8, "Share of the conv layers (the first ones) in the positive term.", 0.0, 1.0)
    n_rate: float = param(0.7, "Share of the conv layers (the first ones) in the negative term.", 0.0, 1.0)
    lam: float = param(1.0, "λ: weight of the negative term.", 0.0, 100.0)
    negative: str = param("paper", "Negative part: 'paper' = min(a, 0); 'code' = the released code's max(a, 0).",
                          choices=("paper", "code"))
    prior_batch: int = param(1, "Artificial images per step at the start (doubled by the curriculum).", 1, 1024)
    gauss_period: int = param(400, "Gaussian prior: iterations between growths of the noise std (official t0 400).",
                              1, 1_000_000)
    gauss_step: int = param(10, "Gaussian prior: growth of the std on the 0–255 scale (official gamma 10; std 10 → "
                            "127).", 0, 127)
    jigsaw_period: int = param(600, "Jigsaw prior: iterations between added cuts (official t0 600; until 4,200).",
                               1, 1_000_000)
    jigsaw_step: int = param(1, "Jigsaw prior: cuts per axis added each time (official gamma 1).", 0, 100)


class TRMUAP(DataFreeAdamUAP):
    name = "trm_uap"
    title = "TRM-UAP (truncated ratio maximisation, Liu et al. 2023)"
    summary = ("Adam on δ over artificial images, raising the positive and suppressing the negative activations "
               "of the first conv layers; no data needed.")
    paper = ("Liu, Feng, Wang, Yang, Ming, TRM-UAP: Enhancing the Transferability of Data-Free Universal "
             "Adversarial Perturbation via Truncated Ratio Maximization, ICCV 2023")
    differs = ("Negative part min(a, 0) as the paper (the code's a > 0 mask: negative='code'); fixed iteration count, "
               "no validation early stop; lr 0.1/255 (code: 0.1 in [0, 1] units); priors as pixel images, Gaussian "
               "ones not augmented; generic curriculum only")
    Params = TRMUAPParams
    stop_after_last_layer = True  # only the first layers are read: skip the rest of the network

    def __init__(self, setup, params) -> None:
        convs = conv_layers(setup.model)
        if not convs or (params.p_rate == 0 and params.n_rate == 0):
            raise ParameterError("TRM-UAP needs conv layers and p_rate or n_rate above 0")
        self.positive_layers = truncate(convs, float(params.p_rate))
        self.negative_layers = truncate(convs, float(params.n_rate))
        super().__init__(setup, params)

    def initial_delta(self) -> torch.Tensor:
        return self.uniform_delta()

    def recorded_layers(self) -> list[torch.nn.Module]:
        """The longer of the two truncated lists (both start at the first conv layer)."""
        return max(self.positive_layers, self.negative_layers, key=len)

    # ------------------------------------------------------------------------------------------ prior
    def curriculum(self, iteration: int) -> tuple[int, int]:
        """(prior batch, std on the 0–255 scale or jigsaw cuts) at ``iteration`` (1-based)."""
        p = self.params
        if p.prior == "jigsaw":
            return trm_jigsaw_curriculum(iteration, p.prior_batch, p.jigsaw_period, p.jigsaw_step)
        return trm_gauss_curriculum(iteration, p.prior_batch, p.gauss_period, p.gauss_step)

    def image_gradients_per_step(self) -> int:
        """Images of the first step (the curriculum doubles the batch later; each step reports its own count)."""
        return 1 if self.params.prior == "none" else self.curriculum(1)[0]

    def prior_images(self, indices: torch.Tensor) -> torch.Tensor | None:
        if self.params.prior == "none":
            return None
        batch, level = self.curriculum(self.iteration + 1)
        generator = self.setup.generator
        if self.params.prior == "jigsaw":
            return jigsaw_images(batch, self.shape, level, generator, self.device)
        std = ((level + 20) / 255, (level + 10) / 255, level / 255)  # official sd [std, std+10, std+20] in B, G, R
        return gaussian_images(batch, self.shape, self.zero_image().flatten().tolist(), std, generator, self.device)

    # ------------------------------------------------------------------------------------------ objective
    def objective(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """−L = Σ_{ℓ∈P} log(‖max(a_ℓ, 0)‖²₂/2 + 1e-9) − λ Σ_{ℓ∈N} log(‖neg(a_ℓ)‖₂/2 + 1e-9) (ascended)."""
        positive = sum(log_l2(a.clamp(min=0), TINY) for a in activations[:len(self.positive_layers)])
        negative_part = (lambda a: a.clamp(max=0)) if self.params.negative == "paper" else (lambda a: a.clamp(min=0))
        negative = sum(torch.log(negative_part(a).norm() / 2 + TINY)
                       for a in activations[:len(self.negative_layers)])
        return positive - float(self.params.lam) * negative
