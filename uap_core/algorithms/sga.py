"""SGA — Liu et al., "Enhancing Generalization of Universal Adversarial Perturbation through Gradient
Aggregation", ICCV 2023.

Small-batch inner pre-search; the gradients of all inner steps are aggregated (averaged) *before* the sign is
taken, and δ moves by one quantised step per outer iteration:

    for each outer batch X (size B) of the fit set:
        y = k(X); d_in = δ; G = []
        repeat K·B/m times:
            idx = m distinct random indices of X
            g = ∇_{d_in} mean(min(CE(f(clamp(X[idx] + d_in)), y[idx]), beta))
            d_in = clamp(d_in + step · sign(g), -eps, eps)        # inner pre-search (thrown away)
            G.append(g)
        δ = clamp(δ + step · sign(mean(G)), -eps, eps)            # the one outer step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from .base import UAPAlgorithm


@dataclass
class SGAParams:
    batch_size: int = param(250, "Outer batch B: images per aggregated update.", 1, 100_000)
    minibatch_size: int = param(10, "Inner mini-batch m: images per inner pre-search step.", 1, 10_000)
    inner_passes: int = param(4, "K: the inner steps cover the outer batch K times (K·B/m steps).", 1, 100)
    step_size: float = param(None, "Step in pixel units (default 0.1·eps = 1/255 at eps 10/255).", 1e-6, 1.0)
    beta: float = param(9.0, "Clamp of the cross-entropy loss (min(CE, beta)).", 1e-3, 1e3)
    momentum: float = param(0.0, "Momentum of the outer update (0 = off, as the paper's default).", 0.0, 0.999)
    loss: str = param("ce", "Loss: clamped cross-entropy ('ce') or the clean label's negative logit.",
                      choices=("ce", "logit"))


class SGA(UAPAlgorithm):
    name = "sga"
    title = "SGA (stochastic gradient aggregation, Liu et al. 2023)"
    summary = "Small-batch inner pre-search; the inner gradients are averaged before one sign step."
    paper = "Liu et al., Enhancing Generalization of UAP through Gradient Aggregation, ICCV 2023"
    differs = "None in the update; the official code's fooling rate against ground truth is not reported"
    Params = SGAParams

    def image_gradients_per_step(self) -> int:
        m = min(int(self.params.minibatch_size), self.batch_size())
        return max(1, self.params.inner_passes * self.batch_size() // m) * m

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        m = min(int(self.params.minibatch_size), len(indices))
        inner_steps = max(1, self.params.inner_passes * len(indices) // m)  # k·num//minibatch, as the official code
        inner_gradients = torch.empty((inner_steps, *self.delta.shape), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        fooled = torch.zeros((), device=self.device)

        d_in = self.delta.clone()
        picks = self.permutations(len(indices), inner_steps)[:, :m]  # m distinct images per inner step
        for j in range(inner_steps):
            pick = picks[j]
            g, batch_loss, batch_fooled = self.gradient(indices[pick], d_in)
            d_in = self.apply(d_in, g, use_momentum=False)
            inner_gradients[j] = g
            loss_sum += batch_loss
            fooled += batch_fooled

        aggregate = inner_gradients.mean(0)
        self.delta = self.apply(self.delta, aggregate)
        self.sign_ops += self.setup.norm == "linf"

        images = inner_steps * m
        stats = {"loss": (loss_sum / images).item(), "batch_fooling_ratio": (fooled / images).item(),
                 "image_gradients": images}
        stats.update(self.update_statistics(aggregate))
        stats.update(self.inner_statistics(inner_gradients, aggregate))
        stats.update(self.delta_statistics())
        return stats

    @staticmethod
    def inner_statistics(inner: torch.Tensor, aggregate: torch.Tensor) -> dict[str, float]:
        """Inner agreement: mean cos(g_j, mean(G)); inner adjacent cosine: mean cos(g_j, g_{j-1})."""
        flat = inner.flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-20)
        agreement = (unit @ (aggregate.flatten() / aggregate.norm().clamp_min(1e-20))).mean()
        adjacent = (unit[1:] * unit[:-1]).sum(1).mean() if len(unit) > 1 else torch.tensor(float("nan"))
        return {"inner_agreement": agreement.item(), "inner_adjacent_cosine": adjacent.item()}
