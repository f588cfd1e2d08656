"""What the data-free methods (GD-UAP, FFF, TRM-UAP) share: Adam on δ (clipped to eps after every step) ascending
an objective on the network's *hidden activations* of δ alone or of δ on artificial prior images — never the fit
images (the Run hands such a method none: ``setup.pixels`` is empty, shape (0, 3, H, W), and only its shape is read).

    δ ~ U(−eps, eps); opt = Adam([δ], lr)
    for t in 1..iterations:                       # one epoch = ``iterations`` updates; default_epochs = 1
        X = prior images (n, 3, H, W), or the zero image of the network when there is no prior
        a_1..a_L = conv activations of clamp(X + δ, 0, 1)
        opt.step() on −∇_δ objective(a);  δ = clamp(δ, −eps, eps)
        saturation rule (GD-UAP, TRM-UAP): s = share of |δ| = eps;
            if s > 0.5 and |s − s_previous| < 1e-5: δ = δ / 2

The saturation rule is the official GD-UAP one (``classification/train.py``, kept by TRM-UAP's ``trmuap.py``):
after each clipped step the saturation s is measured; s_previous is the saturation measured after the previous
step (before any halving; 0 before the first step), and the halving is applied at the end of the iteration, so
Adam's moments carry over. The official codes also measure a validation fooling ratio on real images every
200–400 iterations and stop after 5–10 checks without improvement — that needs real images, which a data-free
run does not have, so here a run is a fixed number of iterations and the last δ is kept.

"The network's zero image": the official codes feed δ alone *in the network's normalised input space* (TF:
mean-subtracted images, ``input = 0 + δ``; the PyTorch codes: ``model(delta)`` on a torchvision model without
normalisation). Our models take pixel images and normalise themselves, so δ alone is fed as
clamp(mean + δ, 0, 1), ``mean`` the model's normalisation mean: the network then sees exactly δ / std.

Activations: the outputs of every ``nn.Conv2d`` (:func:`~uap_core.algorithms.activations.conv_layers`), as the
PyTorch port of GD-UAP and TRM-UAP's official code take them (before batch norm and ReLU). The official TF code of
GD-UAP and FFF takes each conv layer after its ReLU (VGG) and, for ResNet-152, the residual-block outputs; our
models apply ReLU functionally, so that variant cannot be hooked generically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .. import metrics
from ..cpu_threads import threads_for
from ..params import param
from .activations import ActivationRecorder, StopForward, conv_layers
from .adam import AdamUAPAlgorithm
from .base import AttackSetup

SATURATION_MIN = 0.5  # official sat_min: halve only once more than half of δ is at ±eps
SATURATION_CHANGE = 1e-5  # official check: ... and the saturation changed by less than this since the last step


@dataclass
class DataFreeParams:
    """What every data-free method's Params starts with: its length and Adam's learning rate (FFF's help; GD-UAP
    and TRM-UAP declare a field again where their help says more, which keeps its place)."""

    iterations: int = param(2000, "Adam updates of δ per epoch (a run is one epoch by default; the official run "
                            "stops on a validation fooling ratio of real images instead).", 1, 1_000_000)
    lr: float = param(0.1 / 255, "Adam learning rate in pixel units (official: 0.1 on the 0–255 scale = 0.1/255).",
                      1e-7, 1.0)


class DataFreeAdamUAP(AdamUAPAlgorithm):
    """Base of GD-UAP, FFF and TRM-UAP; their Params derive from :class:`DataFreeParams` (``iterations``, ``lr``).

    Subclasses define :meth:`objective` (the ascended quantity over the recorded activations) and may override
    :meth:`prior_images` (default: none, δ alone), :meth:`recorded_layers` (default: every conv layer) and
    :meth:`after_update` (default: the saturation rule).
    """

    family = "data-free"
    supports_targeted = False  # the objectives know no class
    default_epochs = 1  # one epoch = ``iterations`` updates of δ
    uses_gradient_step = False  # its own forward through hooks; nothing for torch.compile to capture
    robust_refusal = ("a data-free method maximises activations of δ (alone or on prior images), never a perturbed "
                      "image's classification, so there is nothing to transform (use a gradient method such as "
                      "sgd_uap)")
    stop_after_last_layer: ClassVar[bool] = False  # skip the network after the last recorded layer (TRM-UAP)
    saturation_rule: ClassVar[bool] = True

    def __init__(self, setup: AttackSetup, params) -> None:
        super().__init__(setup, params)
        self.iteration = 0  # updates of δ so far
        self.saturation_previous = 0.0  # official sat_prev starts at 0
        self.rescales = 0  # times δ was halved
        self.layers = self.recorded_layers()
        self.last_logits: torch.Tensor | None = None  # logits of the last forward (None when it stopped early)

    def state_dict(self) -> dict[str, Any]:
        """Adam's state plus the iteration counter (the schedules and curricula read it), the last saturation and
        the halvings so far."""
        return {**super().state_dict(), "iteration": self.iteration, "saturation_previous": self.saturation_previous,
                "rescales": self.rescales}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.iteration = int(state["iteration"])
        self.saturation_previous = float(state["saturation_previous"])
        self.rescales = int(state["rescales"])

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def shape(self) -> tuple[int, int, int]:
        """δ's shape (3, H, W): the fit images' shape (their tensor is empty for a data-free method)."""
        return tuple(self.setup.pixels.shape[1:])

    def steps_per_epoch(self) -> int:
        return int(self.params.iterations)

    def image_gradients_per_step(self) -> int:
        """Images in one forward/backward batch (δ alone: 1)."""
        return 1

    def step_costs(self) -> list[int]:
        """``iterations`` steps of :meth:`image_gradients_per_step` each (nominal for a growing curriculum)."""
        return [self.image_gradients_per_step()] * self.steps_per_epoch()

    def epoch_batches(self) -> list[torch.Tensor]:
        """``iterations`` dummy batches: the iteration numbers (1,) int64 — no fit image is indexed."""
        first = self.iteration
        return list(torch.arange(first, first + self.steps_per_epoch(), device=self.device).split(1))

    # ------------------------------------------------------------------------------------------ the objective
    def recorded_layers(self) -> list[torch.nn.Module]:
        """The layers whose outputs the objective reads: every conv layer of the model."""
        return conv_layers(self.model)

    def zero_image(self) -> torch.Tensor:
        """(1, 3, 1, 1) the pixel image the network sees as zero: its normalisation mean (0.5 if it has none)."""
        mean = getattr(self.model, "mean", None)
        if isinstance(mean, torch.Tensor):
            return mean.detach().float().view(1, 3, 1, 1).to(self.device)
        return torch.full((1, 3, 1, 1), 0.5, device=self.device)

    def prior_images(self, indices: torch.Tensor) -> torch.Tensor | None:
        """(n, 3, H, W) pixel images in [0, 1] that δ is added to this step, or None: δ alone."""
        return None

    def perturbed(self, delta: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """clamp(images + δ, 0, 1) (n, 3, H, W); without images clamp(zero image + δ, 0, 1) (1, 3, H, W)."""
        base = self.zero_image() if images is None else images
        return (base + delta).clamp(0, 1).contiguous(memory_format=torch.channels_last)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The recorded layers' outputs for the batch x, in fp32 (the hooks are removed again at once: the same
        model is evaluated by the run between steps). Keeps the logits in ``last_logits`` unless the forward
        stopped after the last recorded layer."""
        self.last_logits = None
        with ActivationRecorder(self.layers, stop_after_last=self.stop_after_last_layer) as recorder:
            with self.autocast():
                try:
                    self.last_logits = self.model(x)
                except StopForward:
                    pass
            outputs = recorder.outputs
        return [a.float() for a in outputs]

    def objective(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """The ascended quantity (0-d fp32) over the recorded activations (the papers' −L)."""
        raise NotImplementedError

    def ascent_gradient(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(∇_δ objective (3, H, W), objective × images (so the step's "loss" is the objective), fooled: NaN — no
        labels —, images in the batch)."""
        images = self.prior_images(indices)
        leaf = self.delta.detach().requires_grad_(True)
        x = self.perturbed(leaf, images)
        with threads_for(x.numel(), self.device):
            value = self.objective(self.activations(x))
            (gradient,) = torch.autograd.grad(value, leaf)
        count = len(x)
        return gradient, value.detach() * count, self.fooled_in_batch(indices), count

    def fooled_in_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Fooled images of the batch (0-d): NaN without labels (every data-free prior)."""
        return torch.tensor(float("nan"), device=self.device)

    # ------------------------------------------------------------------------------------------ after each step
    def after_update(self) -> None:
        self.iteration += 1
        if self.saturation_rule:
            self.saturation_halving()

    def saturation_halving(self) -> bool:
        """GD-UAP's rule (L∞ only): halve δ when its saturation s (share of entries at ±eps) exceeds 0.5 and
        changed by less than 1e-5 since the last step. Returns True when δ was halved."""
        if self.setup.norm != "linf":
            return False
        saturation = metrics.saturation(self.delta, self.setup.eps)
        change = abs(saturation - self.saturation_previous)
        self.saturation_previous = saturation
        if saturation > SATURATION_MIN and change < SATURATION_CHANGE:
            with torch.no_grad():
                self.delta.mul_(0.5)
            self.rescales += 1
            return True
        return False

    def delta_statistics(self) -> dict[str, float]:
        stats = super().delta_statistics()
        stats["rescales"] = self.rescales
        return stats


def log_l2(activation: torch.Tensor, tiny: float = 0.0) -> torch.Tensor:
    """log(‖a‖²₂ / 2 + tiny) over the whole tensor (all images of the batch together: TF's ``tf.nn.l2_loss``)."""
    return torch.log(activation.square().sum() / 2 + tiny)


def truncate(layers: list, rate: float) -> list:
    """The first ``int(len · rate)`` layers, at least one when rate > 0 (TRM-UAP's official truncation)."""
    count = int(len(layers) * rate)
    if count <= 0 and rate != 0.0:
        count = 1
    return layers[:count]
