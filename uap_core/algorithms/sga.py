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

Data-parallel (torchrun, R ranks; ``_parallel_step``): every rank draws the same outer batch X and runs the
inner pre-search on its share X_r (the images of X it holds, about B/R of them): K·|X_r|/m inner steps from δ,
its own throw-away d_in. One all_reduce adds the ranks' sums of inner gradients; δ takes one sign step along
their mean over all R chains' inner steps. These are **R parallel inner chains** instead of one: the same number
of inner steps and image-gradients per outer step, and at R = 1 exactly SGA, but each chain walks 1/R as far from
δ before the aggregate is formed — less look-ahead, so a large R tends towards one large-batch gradient at δ
(the instability SGA's aggregation is meant to keep away is not reintroduced: there is still one sign step per
outer batch). Each rank draws every chain's mini-batches from the shared seeded generator, in rank order, so the
generator stays in step on all ranks; inner agreement / adjacent cosine are averaged over all chains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import distributed
from ..params import param
from .base import GradientParams, UAPAlgorithm


@dataclass
class SGABatches:
    batch_size: int = param(250, "Outer batch B: images per aggregated update.", 1, 100_000)
    minibatch_size: int = param(10, "Inner mini-batch m: images per inner pre-search step.", 1, 10_000)
    inner_passes: int = param(4, "K: the inner steps cover the outer batch K times (K·B/m steps).", 1, 100)


@dataclass
class SGAParams(GradientParams, SGABatches):
    """B, m, K, then :class:`~.base.GradientParams`' step_size, beta, momentum (the outer update's), loss."""

    momentum: float = param(0.0, "Momentum of the outer update (0 = off, as the paper's default).", 0.0, 0.999)


class SGA(UAPAlgorithm):
    name = "sga"
    title = "SGA (stochastic gradient aggregation, Liu et al. 2023)"
    summary = "Small-batch inner pre-search; the inner gradients are averaged before one sign step."
    paper = "Liu et al., Enhancing Generalization of UAP through Gradient Aggregation, ICCV 2023"
    differs = "None in the update"
    Params = SGAParams
    supports_distributed = True

    def image_gradients_for_batch(self, size: int) -> int:
        """K·size/m inner steps of m images (m at most size), as :meth:`step` takes them (one process)."""
        m = min(int(self.params.minibatch_size), size)
        return max(1, self.params.inner_passes * size // m) * m

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        if self.setup.shard is not None:
            return self._parallel_step(indices)
        m = min(int(self.params.minibatch_size), len(indices))
        inner_steps = max(1, self.params.inner_passes * len(indices) // m)  # k·num//minibatch, as the official code
        picks = self.permutations(len(indices), inner_steps)[:, :m]  # m distinct images per inner step
        inner_gradients, loss_sum, fooled = self._inner_chain(indices, picks)

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

    def _inner_chain(self, indices: torch.Tensor, picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """The inner pre-search from δ: one step per row of ``picks`` (positions into ``indices``), each on those
        m images. Returns the inner gradients (steps, 3, H, W), the summed loss and the fooled count."""
        inner_gradients = torch.empty((len(picks), *self.delta.shape), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        fooled = torch.zeros((), device=self.device)
        d_in = self.delta.clone()
        for j in range(len(picks)):
            pick = picks[j]
            g, batch_loss, batch_fooled = self.gradient(indices[pick], d_in)
            d_in = self.apply(d_in, g, use_momentum=False)
            inner_gradients[j] = g
            loss_sum += batch_loss
            fooled += batch_fooled
        return inner_gradients, loss_sum, fooled

    def _parallel_step(self, indices: torch.Tensor) -> dict[str, float]:
        """One outer step over R ranks: R parallel inner chains, one all-reduced aggregate (module docstring)."""
        shard = self.setup.shard
        local, sizes = shard.local_share(indices)
        own = None
        for r, n in enumerate(sizes):  # every chain's draws, in rank order: the shared generator stays in step
            if n == 0:
                continue
            m = min(int(self.params.minibatch_size), n)
            drawn = self.permutations(n, max(1, self.params.inner_passes * n // m))[:, :m]
            if r == shard.rank:
                own = drawn
        if own is not None:
            inner_gradients, loss_sum, fooled = self._inner_chain(local, own)
            summed = inner_gradients.sum(0)
            counts = torch.tensor([own.shape[0], own.numel()], dtype=torch.int64)
        else:
            inner_gradients = torch.empty((0, *self.delta.shape), device=self.device)
            summed = torch.zeros_like(self.delta)
            loss_sum = torch.zeros((), device=self.device)
            fooled = torch.zeros((), device=self.device)
            counts = torch.zeros(2, dtype=torch.int64)
        summed, loss_sum, fooled, counts = distributed.all_reduce_sum(
            [summed, loss_sum, fooled, counts], "all_reduce of the aggregated gradient")
        inner_steps, images = (int(c) for c in counts.tolist())
        aggregate = summed / inner_steps
        self.delta = self.apply(self.delta, aggregate)
        self.sign_ops += self.setup.norm == "linf"

        sums = self.inner_statistic_sums(inner_gradients, aggregate)
        (sums,) = distributed.all_reduce_sum([sums], "all_reduce of the inner statistics")
        agreement, adjacent, pairs = sums.tolist()
        stats = {"loss": (loss_sum / images).item(), "batch_fooling_ratio": (fooled / images).item(),
                 "image_gradients": images}
        stats.update(self.update_statistics(aggregate))
        stats.update({"inner_agreement": agreement / inner_steps,
                      "inner_adjacent_cosine": adjacent / pairs if pairs else float("nan")})
        stats.update(self.delta_statistics())
        return stats

    @staticmethod
    def inner_statistic_sums(inner: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """(3,) fp32: Σ_j cos(g_j, aggregate), Σ_j cos(g_j, g_{j-1}) within the chain, and the number of pairs."""
        if len(inner) == 0:
            return torch.zeros(3, device=aggregate.device)
        flat = inner.flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-20)
        agreement = (unit @ (aggregate.flatten() / aggregate.norm().clamp_min(1e-20))).sum()
        adjacent = (unit[1:] * unit[:-1]).sum()
        return torch.stack([agreement, adjacent, torch.tensor(float(len(unit) - 1), device=unit.device)]).float()

    @staticmethod
    def inner_statistics(inner: torch.Tensor, aggregate: torch.Tensor) -> dict[str, float]:
        """Inner agreement: mean cos(g_j, mean(G)); inner adjacent cosine: mean cos(g_j, g_{j-1})."""
        flat = inner.flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-20)
        agreement = (unit @ (aggregate.flatten() / aggregate.norm().clamp_min(1e-20))).mean()
        adjacent = (unit[1:] * unit[:-1]).sum(1).mean() if len(unit) > 1 else torch.tensor(float("nan"))
        return {"inner_agreement": agreement.item(), "inner_adjacent_cosine": adjacent.item()}
