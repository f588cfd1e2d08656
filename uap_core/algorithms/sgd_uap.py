"""SGD-UAP — stochastic projected (sign-)gradient ascent on mini-batches (SPGD: Shafahi et al. AAAI 2020,
Mummadi et al. ICCV 2019), as the SGA paper's official code runs its baseline:

    for each batch X (size B = 250, shuffled) of the fit set:
        y = k(X)
        g = ∇_δ mean(min(CE(f(clamp(X + δ)), y), beta))
        δ = clamp(δ + step · sign(g), -eps, eps)          # step = 0.1 · eps

Data-parallel (torchrun, R ranks): every rank draws the same batch X; each computes the summed gradient of the
images of X it holds, one all_reduce adds them, and the sum is divided by |X| — the same g and the same δ on
every rank, equal to one process's up to float32 summation order (see ``UAPAlgorithm.batch_gradient``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from .base import GradientParams, UAPAlgorithm


@dataclass
class SGDUAPBatches:
    batch_size: int = param(250, "Batch B: images per gradient step.", 1, 100_000)


@dataclass
class SGDUAPParams(GradientParams, SGDUAPBatches):
    """batch_size, then :class:`~.base.GradientParams`' step_size, beta, momentum, loss."""


class SGDUAP(UAPAlgorithm):
    name = "sgd_uap"
    title = "SGD-UAP (stochastic projected gradient ascent)"
    summary = "One sign step of the clamped cross-entropy's gradient per batch of images."
    paper = "Shafahi et al., AAAI 2020; Mummadi et al., ICCV 2019"
    differs = "As the SGA paper's official baseline (clamped CE, sign step 0.1·eps); momentum optional"
    Params = SGDUAPParams
    supports_distributed = True

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        g, loss_sum, fooled = self.batch_gradient(indices, self.delta)  # several ranks: all-reduced (base.py)
        self.delta = self.apply(self.delta, g)
        self.sign_ops += self.setup.norm == "linf"
        stats = {"loss": (loss_sum / len(indices)).item(),
                 "batch_fooling_ratio": (fooled / len(indices)).item(), "image_gradients": len(indices)}
        stats.update(self.update_statistics(g))
        stats.update(self.delta_statistics())
        return stats
