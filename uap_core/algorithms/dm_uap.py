"""DM-UAP — Zhang et al., "Improving Generalization of Universal Adversarial Perturbation via Dynamic Maximin
Optimization", AAAI 2025. Official code: yechao-zhang/DM-UAP (``attack_min_x_theta_adam.py``: the loop;
``PGDL2.py``: the inner problem; ``run.sh``: the settings), built on SGA's code.

A δ that fools the model also at nearby weights and on nearby images should generalise better: for every batch
the model and the images are first moved, within growing radii, to where δ has the hardest job — lower loss on
their own clean predictions — and δ then takes one AdamW step against that worst case:

    δ ~ U(−eps, eps);  opt = AdamW([δ], lr = 0.1)                    # weight decay 0.01 (PyTorch's default)
    for epoch e = 1..E:
        ρ_e = ρ · e / E;   a_e = a · e / E                            # curriculum: both radii grow linearly
        for batch X (size B, shuffled) of the fit set:
            y = k_θ(X)                                                # the clean predictions
            θ' = θ                                                    # 1. worst-case weights (descent, radius ρ_e)
            repeat S_θ times:
                g = ∇_θ' L_s(f_θ'(X), y)                              # L_s: CE with label smoothing s
                θ' = θ' − (ρ_e / S_θ) · g / ‖g‖₂                      # ‖·‖₂ over all parameters at once
            X' = X                                                    # 2. worst-case images (L2 PGD, radius a_e)
            repeat S_x times:
                g_i = ∇_{X'_i} CE(f_θ'(X'), y)                        # per image
                X'_i = Π_{‖X'_i − X_i‖₂ ≤ a_e} (X'_i − (a_e / 8) · g_i / ‖g_i‖₂),  clamped to [0, 1]
            L = −mean min(CE(f_θ'(clamp(X' + δ, 0, 1)), y), β)       # 3. δ against the worst case, β = 9
            opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)
            θ' = θ                                                    # the weights restored after every batch

The inner problem does not see δ (``PGD_theta_x_apart.forward`` is called without it): it makes the model and
the images *harder to fool* — more confident in their clean predictions — and δ maximises its clamped
cross-entropy there (the maximin). L_s(z, y) = (1 − s) · (−log softmax(z)_y) + s · mean_c(−log softmax(z)_c),
``loss_gls`` of the official code, with s = ``smooth_rate``.

Settings: the official run script ``run.sh`` (``--batch_size 125 --alpha 10 --epoch 20 --dm 1 --num_images 500
--rho 4 --steps 10 --aa 25 --cc 10 --smooth_rate 0.2``). ``smooth_rate`` is 0.2, the script's value: the argparse
default (−0.2) is what runs only when the flag is left out, and the script is what the authors ran and published
as the demo of their results. eps 10/255 (``--alpha 10``) is the run's ``eps``; 500 images (``--num_images``) its
``fit``; 20 epochs its default. Units: the official images are ``ToTensor`` pixels in [0, 1] with the
normalisation inside the model, as here, so eps, lr and δ are in the same units as ours (lr 0.1 is 0.1 here); ρ is
an absolute L2 length in the space of all the model's parameters (not relative to the weights' size: one global
gradient norm over every parameter, as the official ``grad_norm``); ``image_radius`` (``--aa``) is an L2 length in
pixel units of a 224×224 image.

Cost, counted honestly for equal-budget races: every forward + backward pass over one image counts one
image-gradient, whether the backward goes to the image (the PGD steps, the δ step) or to the weights (the weight
steps); a step costs B · (S_θ + S_x + 1) image-gradients (B · 21 = 2,625 at the defaults), the clean-prediction
forward (precomputed by the run) nothing. A weight-gradient backward costs somewhat more than an input-gradient
one (it computes the weights' gradients too), so the count understates DM-UAP's time a little, never its work.

Measured (``tests/test_dm_uap.py``; CIFAR-10 ResNet-20, fit 500 / held-out 1,000 test images, eps 8/255 L∞,
seed 0, 5,000 image-gradients each; DM-UAP with 2 weight and 2 image steps instead of 10 and 10 and a 2-epoch
curriculum, 8 AdamW steps): held-out fooling ratio 0.660, SGA (B 125, m 10, K 4; 10 sign steps) 0.584, random ±eps
noise 0.294; SGD-UAP at B 25 (200 sign steps) 0.779 at the same cost. Part of DM-UAP's lead over SGA there is the
step: SGA's sign steps of eps/10 from zero only reach ±eps after 10 steps, while DM-UAP starts at ±eps noise and its
first AdamW step at lr 0.1 (= 3.2 eps) saturates δ. ρ = 4 is about 7 % of ResNet-20's weight norm (‖θ‖₂ = 55.3; ρ is
absolute, so how large it is relative to the weights depends on the network); two steps of ρ/2 moved the weights
by ‖θ' − θ‖₂ ≈ 2.8 in the last epoch. The abstract's claim (+12.1 % average fooling ratio
from 500 ImageNet images) is not re-measured here.

Where and why we differ from the official code:

- The weight steps run the model in eval mode. The official code switches to ``model.train()`` for them:
  dropout on and BatchNorm on batch statistics, whose running averages the ten train-mode forwards also drift
  toward the batch's (undone by the restore after the batch, but in force for that batch's image PGD and δ
  step). Here the perturbed model is the deterministic one the run evaluates: the same seed gives the same δ.
- The weights perturbed are those of a private copy of the model (:attr:`DMUAP.working_model`), reset from the
  run's model after every batch (in a ``finally``: an error mid-step never leaves perturbed weights). The
  official code perturbs its one model in place and reloads a saved state dict; here the run's model is shared
  with the evaluation, the memo of clean predictions and, in the app, other visitors' runs in other threads, so
  it is never written to. The copy doubles the memory of the weights.
- x + δ is clamped to [0, 1] in the δ step (the official update feeds x' + δ unclamped; its evaluation clamps).
- ``image_radius`` is scaled by √(H·W) / 224 at other input sizes, so that the per-pixel RMS of the image
  perturbation is the official one (25 / √(3 · 224²) ≈ 0.064 ≈ 16/255); on 32×32 CIFAR images the radius is
  25 · 32 / 224 ≈ 3.6. ρ is not scaled (its meaning depends on the network, not the images).
- The clean labels come from the run (k(x) of the fit images, computed once); the official loop recomputes them
  per batch with the restored model — the same labels.
- Only the clamped cross-entropy (``--cross_loss 1``, the run script's); untargeted only (the official code has no
  targeted mode); one model at a time (no ensemble); the L2 norm is an extension (δ projected onto the L2 ball).
- The official code saves δ after every epoch and evaluates the loss on the fit set; the run evaluates held-out
  images every ``eval_every`` steps and keeps the best δ by the fit-set fooling ratio (``keep``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import metrics
from ..cpu_threads import threads_for
from ..errors import ParameterError, first_line
from ..params import param
from .adam import AdamUAPAlgorithm
from .base import AttackSetup

REFERENCE_SIDE = 224  # the input side the official image radius is given for


@dataclass
class DMUAPParams:
    batch_size: int = param(125, "Images per AdamW step of δ (official run script: 125).", 1, 100_000)
    lr: float = param(0.1, "AdamW learning rate on δ, pixel units (official 0.1; its images are in [0, 1] too).",
                      1e-6, 10.0)
    weight_decay: float = param(0.01, "AdamW's decoupled weight decay on δ (official: PyTorch's default 0.01).",
                                0.0, 1.0)
    beta: float = param(9.0, "Clamp of the cross-entropy loss (min(CE, beta)).", 1e-3, 1e3)  # the δ step's; official 9
    rho: float = param(4.0, "ρ: L2 radius of the weight perturbation at the last epoch, over all the model's "
                            "parameters at once, absolute (official --rho 4); grows linearly from rho/epochs.",
                       0.0, 1e6)
    weight_steps: int = param(10, "Steps of the weight perturbation, each of length ρ_e/steps (official --steps "
                                  "10; 0 = none).", 0, 1000)
    image_radius: float = param(25.0, "L2 radius of the image perturbation at the last epoch, pixel units of a "
                                      "224×224 image (official --aa 25), scaled by √(H·W)/224 at other sizes; "
                                      "grows linearly from image_radius/epochs.", 0.0, 1e6)
    image_steps: int = param(10, "L2 PGD steps of the image perturbation, each of radius/8 (official --cc 10; "
                                 "0 = none).", 0, 1000)
    smooth_rate: float = param(0.2, "Label smoothing s of the weight perturbation's loss (official run script "
                                    "0.2; its argparse default -0.2).", -100.0, 1.0)


class DMUAP(AdamUAPAlgorithm):
    name = "dm_uap"
    title = "DM-UAP (dynamic maximin over weights and images, Zhang et al. 2025)"
    summary = ("AdamW on δ against worst-case nearby weights and images (radii growing over the epochs); "
               "the weights restored after every batch.")
    paper = ("Zhang et al., Improving Generalization of Universal Adversarial Perturbation via Dynamic Maximin "
             "Optimization, AAAI 2025")
    differs = ("Weight steps in eval mode (official: train mode — dropout, BatchNorm batch statistics); weights of a "
               "private copy, never the shared model; x + δ clamped; image radius scaled by √(H·W)/224 off 224 px; "
               "clamped CE only, untargeted, one model")
    family = "data-driven"
    supports_targeted = False
    supports_ensemble = False
    uses_gradient_step = False  # its own forwards (perturbed model, perturbed images): nothing to compile
    default_epochs = 20
    Params = DMUAPParams

    def __init__(self, setup: AttackSetup, params) -> None:
        super().__init__(setup, params)
        self.optimizer = torch.optim.AdamW([self.delta], lr=float(params.lr),
                                           weight_decay=float(params.weight_decay))
        self.epoch = 1  # the current epoch, 1-based (end_epoch counts)
        # the copy whose weights the inner problem moves; the run's model is never written to
        try:
            self.working_model = copy.deepcopy(setup.model)
        except Exception as exc:  # noqa: BLE001 - e.g. a user's model file that cannot be copied
            raise ParameterError(f"dm_uap perturbs a copy of the model's weights, and this model cannot be copied "
                                 f"({type(exc).__name__}: {first_line(exc)}); use another method") from None
        self.working_model.eval().requires_grad_(False)
        self._weights = [p for p in self.working_model.parameters()]
        self._pairs = list(zip(list(self.working_model.parameters()) + list(self.working_model.buffers()),
                               list(setup.model.parameters()) + list(setup.model.buffers())))

    def initial_delta(self) -> torch.Tensor:
        """Uniform in ±eps from the seeded generator (official: ``-2 * eps * rand + eps``)."""
        return self.uniform_delta()

    # ------------------------------------------------------------------------------------------ schedule and cost
    def radii(self) -> tuple[float, float]:
        """(ρ_e, a_e) of the current epoch: ρ · e/E and the image radius · e/E (in this input size's pixels)."""
        share = min(self.epoch, self.planned_epochs) / self.planned_epochs
        height, width = self.setup.pixels.shape[2:]
        side_scale = math.sqrt(height * width) / REFERENCE_SIDE
        return float(self.params.rho) * share, float(self.params.image_radius) * side_scale * share

    def passes_per_image(self) -> int:
        """Forward + backward passes each image of a batch costs: the weight steps, the PGD steps, the δ step."""
        weight = int(self.params.weight_steps) if self.params.rho > 0 else 0
        image = int(self.params.image_steps) if self.params.image_radius > 0 else 0
        return weight + image + 1

    def image_gradients_for_batch(self, size: int) -> int:
        return size * self.passes_per_image()

    def end_epoch(self) -> bool:
        self.epoch += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state and the base's (:class:`~.adam.AdamUAPAlgorithm`), plus the epoch the curriculum is at."""
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])

    # ------------------------------------------------------------------------------------------ the step
    def step(self, indices: torch.Tensor) -> dict[str, float]:
        x = self.images(indices)
        y = self.setup.clean_labels[indices]
        rho, radius = self.radii()
        try:
            weight_shift = self.perturb_weights(x, y, rho)
            x_worst = self.perturb_images(x, y, radius)
            gradient, loss_sum, fooled = self.delta_gradient(x_worst, y)
        finally:
            self.restore_weights()
        self.delta.grad = -gradient  # AdamW minimises L = −(mean clamped CE)
        self.optimizer.step()
        self.delta.grad = None
        with torch.no_grad():
            self.delta.copy_(metrics.project(self.delta, self.setup.eps, self.setup.norm))
        n = len(indices)
        stats = {"loss": (loss_sum / n).item(), "batch_fooling_ratio": (fooled / n).item(),
                 "image_gradients": n * self.passes_per_image(), "rho": rho, "image_radius": radius,
                 "weight_shift": weight_shift,
                 "image_shift": (x_worst - x).flatten(1).norm(dim=1).mean().item()}
        stats.update(self.update_statistics(gradient))
        stats.update(self.delta_statistics())
        return stats

    def _chunks(self, n: int) -> list[slice]:
        size = self.chunk_size or n
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def perturb_weights(self, x: torch.Tensor, y: torch.Tensor, rho: float) -> float:
        """Step 1: θ' = θ' − (ρ/S) · g/‖g‖₂, S times, g the gradient of the label-smoothed CE of the batch over all
        parameters of the working copy. Returns ‖θ' − θ‖₂ (≤ ρ)."""
        steps = int(self.params.weight_steps)
        if rho <= 0 or steps == 0:
            return 0.0
        s = float(self.params.smooth_rate)
        self.working_model.requires_grad_(True)
        try:
            for _ in range(steps):
                grads = [torch.zeros_like(w) for w in self._weights]
                for part in self._chunks(len(x)):
                    with threads_for(x[part].numel(), self.device):
                        with self.autocast():
                            logits = self.working_model(x[part].contiguous(memory_format=torch.channels_last))
                        log_p = F.log_softmax(logits.float(), dim=-1)
                        per_image = (1 - s) * -log_p.gather(1, y[part, None])[:, 0] + s * -log_p.mean(-1)
                        found = torch.autograd.grad(per_image.sum() / len(x), self._weights, allow_unused=True)
                    for total, g in zip(grads, found):
                        if g is not None:
                            total += g
                norm = torch.stack([g.norm() for g in grads]).norm()
                scale = (rho / steps) / (norm + 1e-12)
                with torch.no_grad():
                    for w, g in zip(self._weights, grads):
                        w.sub_(g * scale)
        finally:
            self.working_model.requires_grad_(False)
        with torch.no_grad():
            return math.sqrt(sum(float((w - w0).float().pow(2).sum()) for w, w0 in
                                 zip(self._weights, self.setup.model.parameters())))

    def perturb_images(self, x: torch.Tensor, y: torch.Tensor, radius: float) -> torch.Tensor:
        """Step 2: L2 PGD on the images, descending CE(f_θ'(X'), y): steps of radius/8 along the normalised
        per-image gradient, projected onto ‖X' − X‖₂ ≤ radius per image and clamped to [0, 1]. (n, 3, H, W)."""
        steps = int(self.params.image_steps)
        if radius <= 0 or steps == 0:
            return x
        step = radius * 0.125
        worst = x.clone()
        for _ in range(steps):
            grad = torch.empty_like(x)
            for part in self._chunks(len(x)):
                leaf = worst[part].detach().requires_grad_(True)
                with threads_for(leaf.numel(), self.device):
                    with self.autocast():
                        logits = self.working_model(leaf.contiguous(memory_format=torch.channels_last))
                    loss = F.cross_entropy(logits.float(), y[part], reduction="sum") / len(x)
                    (grad[part],) = torch.autograd.grad(loss, leaf)
            norms = grad.flatten(1).norm(dim=1) + 1e-10
            moved = worst - step * grad / norms[:, None, None, None]
            shift = moved - x
            shift_norms = shift.flatten(1).norm(dim=1)
            factor = torch.clamp(radius / shift_norms.clamp_min(1e-30), max=1.0)
            worst = (x + shift * factor[:, None, None, None]).clamp(0, 1).detach()
        return worst

    def delta_gradient(self, x_worst: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """Step 3: g = ∇_δ mean min(CE(f_θ'(clamp(X' + δ, 0, 1)), y), β) — the ascended quantity — with the summed
        clamped CE and the number of images whose label differs from y (on the perturbed model and images). In a robust
        run (``RunConfig.robust``) the model sees a random transformation of each clamp(X' + δ) (:meth:`view`): only
        this δ step, as everywhere; the worst-case weights and images are found on the images as they are."""
        gradient = torch.zeros_like(self.delta)
        loss_sum = torch.zeros((), device=self.device)
        fooled = torch.zeros((), device=self.device)
        beta = float(self.params.beta)
        for part in self._chunks(len(x_worst)):
            leaf = self.delta.detach().requires_grad_(True)
            with threads_for(x_worst[part].numel(), self.device):
                perturbed = self.view((x_worst[part] + leaf).clamp(0, 1))  # a robust run: a random view of it
                perturbed = perturbed.contiguous(memory_format=torch.channels_last)
                with self.autocast():
                    logits = self.working_model(perturbed)
                losses = F.cross_entropy(logits.float(), y[part], reduction="none").clamp(max=beta)
                (g,) = torch.autograd.grad(losses.sum(), leaf)
            gradient += g
            loss_sum += losses.detach().sum()
            fooled += (logits.detach().argmax(1) != y[part]).sum()
        return gradient / len(x_worst), loss_sum, fooled

    def restore_weights(self) -> None:
        """The working copy's parameters and buffers set back, bit for bit, to the run's model's."""
        with torch.no_grad():
            for mine, original in self._pairs:
                mine.copy_(original)
