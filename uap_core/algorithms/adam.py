"""What the Adam-on-δ methods share (DF-UAP, Cos-UAP, and the data-free GD-UAP, FFF, TRM-UAP): δ is a parameter that
Adam moves on the method's objective, clipped back into the eps ball after every step (the official DF-UAP and
GD-UAP code: ``optimizer.step()`` then ``δ ← clamp(δ, −eps, eps)``).

The papers *minimise* a loss L; the shared gradient code (:meth:`UAPAlgorithm.gradient`) returns the gradient of
the quantity *ascended*, so a method here defines ``loss_per_image`` (or, data-free, :meth:`ascent_gradient`) as −L
per image and Adam is handed ``grad = −g``: the very update of the papers.

A data-free method sets ``family = "data-free"``: it is given no fit images, defines ``steps_per_epoch`` from its
own ``iterations`` parameter, and overrides :meth:`ascent_gradient` to feed δ alone or δ on artificial prior images.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import metrics
from .base import AttackSetup, UAPAlgorithm, copied


class AdamUAPAlgorithm(UAPAlgorithm):
    """δ ← clip(Adam(δ, −g), eps) each step. Params must have ``lr`` (and may have ``beta1``, default 0.9)."""

    takes_sign_steps = False

    def __init__(self, setup: AttackSetup, params) -> None:
        super().__init__(setup, params)
        self.delta = self.initial_delta()
        betas = (float(getattr(params, "beta1", 0.9)), 0.999)
        self.optimizer = torch.optim.Adam([self.delta], lr=float(params.lr), betas=betas)

    def initial_delta(self) -> torch.Tensor:
        """δ before the first step, (3, H, W) fp32 on the device: zeros (DF-UAP, Cos-UAP). GD-UAP starts from
        uniform noise in ±eps (drawn from the seeded generator)."""
        return torch.zeros(self.setup.pixels.shape[1:], dtype=torch.float32, device=self.device)

    def uniform_delta(self) -> torch.Tensor:
        """Uniform noise in [−eps, eps] (L∞) from the seeded generator, projected onto the ball (L2)."""
        generator = self.setup.generator
        noise = torch.rand(self.setup.pixels.shape[1:], generator=generator, device=generator.device)
        return metrics.project((noise * 2 - 1) * self.setup.eps, self.setup.eps, self.setup.norm).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus Adam's (its step count and both moments of δ)."""
        return {**super().state_dict(), "optimizer": copied(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])  # moves the moments to δ's device

    def restore_delta(self, delta: torch.Tensor) -> None:
        """Into the tensor Adam steps (it stays the optimiser's parameter)."""
        with torch.no_grad():
            self.delta.copy_(delta)

    def ascent_gradient(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(g (3, H, W): the gradient of the ascended quantity at δ, summed loss (0-d), fooled count (0-d), images
        the loss was taken over). Default: over the fit images ``indices`` (chunked on out-of-memory, compiled)."""
        gradient, loss_sum, fooled = self.gradient(indices, self.delta)
        return gradient, loss_sum, fooled, len(indices)

    def after_update(self) -> None:
        """Called after each clipped Adam step (GD-UAP: the saturation-halving rule)."""

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        gradient, loss_sum, fooled, images = self.ascent_gradient(indices)
        self.delta.grad = -gradient  # Adam minimises the papers' L = −(ascended quantity)
        self.optimizer.step()
        self.delta.grad = None
        with torch.no_grad():
            self.delta.copy_(metrics.project(self.delta, self.setup.eps, self.setup.norm))
        self.after_update()
        stats = {"loss": (loss_sum / max(images, 1)).item(), "batch_fooling_ratio": (fooled / max(images, 1)).item(),
                 "image_gradients": images}
        stats.update(self.update_statistics(gradient))
        stats.update(self.delta_statistics())
        return stats
