"""What every UAP method shares: the fit images on the device, the loss, the gradient with respect to δ,
the projected update and the bookkeeping of update statistics.

A method subclasses :class:`UAPAlgorithm`, declares its ``Params`` dataclass (paper defaults, ranges, help) and
implements :meth:`step`; :class:`uap_core.run.Run` drives it epoch by epoch. δ is always (3, H, W) float32 in
pixel units on the model's device; the perturbed image is clamp(x + δ, 0, 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from .. import distributed, metrics
from ..cpu_threads import threads_for
from ..distributed import Shard
from ..models.ensemble import members_of
from ..errors import first_line
from ..evaluation import autocast
from ..models import Classifier
from ..params import param
from ..transforms import Robustness

log = logging.getLogger(__name__)


@dataclass
class AttackSetup:
    """Everything a method needs besides its own hyperparameters.

    pixels: (N, 3, H, W) uint8 fit images on the model's device; clean_labels: (N,) int64, k(x) on the same device —
    for an ensemble (N, M): each member's own clean prediction (and clean_logits (N, M, C)).
    eps: budget in pixel units (10/255); norm: "linf" | "l2"; target: class index for a targeted attack, else None.
    generator: seeded torch.Generator on the CPU (batch order, inner sampling): the same seed draws the same
    images on every device, so a CUDA run follows the CPU run's batches (the indices are copied to the device).
    clean_logits: (N, C) fp32 f(x) of the fit images, on the device — only for methods that declare
    ``uses_clean_logits`` (e.g. Cos-UAP's cosine to the clean logit vector), else None.
    precision: "fp32" | "bf16" | "fp16": the dtype of the model's forward/backward (δ and gradients stay fp32).
    compile: capture the forward + backward of :meth:`UAPAlgorithm.gradient` with ``torch.compile`` (on CUDA in
    ``mode="reduce-overhead"``: CUDA graphs, which remove the launch overhead of small batches). Falls back to
    eager, once and for good, if compiling fails.
    shard: in a multi-process run (torchrun), which block of the fit set this rank holds: ``pixels``,
    ``clean_labels`` and ``clean_logits`` are then that block only, while batch indices keep numbering the whole
    fit set (``shard.total`` images); None in a single process (the block is everything).
    robust: the random transformations a robust run fits δ through (:class:`uap_core.transforms.Robustness`: one
    view of every perturbed image per step, drawn from ``generator``), or None: the exact pixels.
    """

    model: Classifier
    pixels: torch.Tensor
    clean_labels: torch.Tensor
    eps: float
    norm: str
    target: int | None
    generator: torch.Generator
    precision: str = "fp32"
    compile: bool = False
    clean_logits: torch.Tensor | None = None
    shard: Shard | None = None
    robust: Robustness | None = None


@dataclass
class GradientParams:
    """The update and loss fields of the methods that ascend the clamped cross-entropy by sign steps (SGA,
    SGD-UAP), as :meth:`UAPAlgorithm.step_size`, :meth:`~UAPAlgorithm.step_direction` and
    :meth:`~UAPAlgorithm.loss_per_image` read them.

    A method declares its batch fields in a dataclass of its own and lists it *after* this one among the bases —
    ``class SGDUAPParams(GradientParams, SGDUAPBatches)`` — so its batch fields come first in forms and on the
    command line (a dataclass orders its fields base-first along the reversed MRO; a field a subclass declares
    again keeps its place and takes the new default and help).
    """

    step_size: float = param(None, "Step in pixel units (default 0.1·eps = 1/255 at eps 10/255).", 1e-6, 1.0)
    beta: float = param(9.0, "Clamp of the cross-entropy loss (min(CE, beta)).", 1e-3, 1e3)
    momentum: float = param(0.0, "Momentum (0 = off; 0.9 with v = 0.9 v + g/|g|_1 as an option).", 0.0, 0.999)
    loss: str = param("ce", "Loss: clamped cross-entropy ('ce') or the clean label's negative logit.",
                      choices=("ce", "logit"))


FAMILIES = ("data-driven", "data-free", "generative")
# On the CPU a gradient batch is split into chunks of at most this many pixels per forward/backward (32 images at
# 224², 1,568 at 32²): the same sum, but the activations kept for the backward stay near 1.7 GB instead of growing
# with the batch (measured: SGD-UAP's B 250 on EfficientNet-Lite0 in one piece held 13.8 GB, enough to get the
# process killed on a laptop, where there is no out-of-memory error to back off from). On CUDA the batch is whole
# and halves on out-of-memory.
CPU_CHUNK_PIXELS = 32 * 224 * 224


class UAPAlgorithm:
    """Base class: one instance is one attack in progress; ``delta`` is its current perturbation.

    family: "data-driven" (fits δ on the fit images), "data-free" (never reads them: :class:`uap_core.run.Run`
    hands such a method no fit images at all, and keeps its last δ, since picking the best would need them) or
    "generative" (trains a generator whose output is δ). summary: one line of what the method does; paper: its
    citation (both shown by the UI's method picker); differs: where it departs from the paper or official code
    (the README's method table, ``bench/methods.py``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    Params: ClassVar[type]
    family: ClassVar[str] = "data-driven"
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    differs: ClassVar[str] = ""  # one line: where this implementation differs from the paper / official code
    supports_targeted: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 20
    uses_gradient_step: ClassVar[bool] = True  # steps through :meth:`gradient` (what ``compile`` captures)
    uses_clean_logits: ClassVar[bool] = False  # needs AttackSetup.clean_logits
    supports_ensemble: ClassVar[bool] = True  # its loss goes through loss_and_fooled (averaged over the members)
    takes_sign_steps: ClassVar[bool] = True  # δ moves by quantised sign steps (quantisation error is reported)
    supports_distributed: ClassVar[bool] = False  # runs data-parallel under torchrun (reduces via batch_gradient)
    # why a robust δ (RunConfig.robust) cannot be fitted by this method, one line; None: it can (its perturbed
    # images pass through :meth:`view` on their way into the model)
    robust_refusal: ClassVar[str | None] = None

    def __init__(self, setup: AttackSetup, params) -> None:
        self.setup = setup
        self.params = params
        self.model = setup.model
        self.device = setup.pixels.device
        self.delta = torch.zeros(setup.pixels.shape[1:], dtype=torch.float32, device=self.device)
        self.sign_ops = 0  # sign steps applied to δ so far
        self.previous_gradient: torch.Tensor | None = None
        self.update_sum: torch.Tensor | None = None  # Σ of the updates' directions so far (update_mean_cosine)
        self.momentum_buffer: torch.Tensor | None = None
        # largest batch one forward/backward takes: bounded on the CPU (CPU_CHUNK_PIXELS), lowered on out-of-memory
        self.chunk_size: int | None = (max(1, CPU_CHUNK_PIXELS // math.prod(setup.pixels.shape[2:]))
                                       if self.device.type == "cpu" and setup.pixels.dim() == 4 else None)
        self.planned_epochs = type(self).default_epochs  # what the run plans (:meth:`plan`)
        self.compile_error: str | None = None  # why compiling failed (the eager path is used since)
        self._compiled: Callable | None = None
        if setup.compile and self.uses_gradient_step and setup.robust is None:  # random views: eager
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled = torch.compile(self.loss_and_fooled, mode=mode, dynamic=False)

    # ------------------------------------------------------------------------------------------ data
    @property
    def num_images(self) -> int:
        """Fit images; in a multi-process run all ranks' together (the batches number them all)."""
        return self.setup.shard.total if self.setup.shard is not None else self.setup.pixels.shape[0]

    @classmethod
    def is_data_free(cls, params=None) -> bool:
        """True when this method, with these params, reads no fit images (GD-UAP: unless its prior is "data")."""
        return cls.family == "data-free"

    def batch_size(self) -> int:
        return max(1, min(int(self.params.batch_size), self.num_images))

    def steps_per_epoch(self) -> int:
        """Updates of δ per epoch (one per batch of fit images; a data-free method defines its own)."""
        return math.ceil(self.num_images / self.batch_size())

    def image_gradients_per_step(self) -> int:
        """Forward + input-gradient backward passes over single images that one step costs (the unit of a fair
        budget: ``RunConfig.max_image_gradients``): :meth:`image_gradients_for_batch` of a full batch."""
        return self.image_gradients_for_batch(self.batch_size())

    def image_gradients_for_batch(self, size: int) -> int:
        """The image-gradients one step on a batch of ``size`` fit images costs. Default: one per image. Nominal
        where the cost depends on δ (UAP's DeepFool skips fooled images): each step reports what it spent."""
        return size

    def step_costs(self) -> list[int]:
        """The image-gradients of each step of one epoch, in order (``steps_per_epoch()`` entries): full batches,
        then the shorter last one when the batch size does not divide the fit images. What the run's budget plan
        (``run_setup._budget``) counts, so that the announced total is the steps the run takes."""
        size = self.batch_size()
        full, rest = divmod(self.num_images, size)
        return [self.image_gradients_for_batch(size)] * full + ([self.image_gradients_for_batch(rest)] if rest else [])

    def permutation(self, n: int) -> torch.Tensor:
        """A random permutation of 0..n-1 (n,) int64 on the device, drawn from the seeded generator (on the CPU:
        the same draws on every device; the copy to a GPU is asynchronous and waits for nothing)."""
        generator = self.setup.generator
        return torch.randperm(n, generator=generator, device=generator.device).to(self.device, non_blocking=True)

    def permutations(self, n: int, count: int) -> torch.Tensor:
        """``count`` random permutations of 0..n-1, (count, n) int64 on the device: the same draws as ``count`` calls
        of :meth:`permutation`, moved to the device in one copy (SGA's inner steps draw all theirs at once)."""
        generator = self.setup.generator
        drawn = torch.stack([torch.randperm(n, generator=generator, device=generator.device) for _ in range(count)])
        return drawn.to(self.device, non_blocking=True)

    def epoch_batches(self) -> list[torch.Tensor]:
        """One epoch's shuffled mini-batches of fit-image indices (on the device)."""
        return list(self.permutation(self.num_images).split(self.batch_size()))

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) float in [0, 1] from the uint8 fit images."""
        return self.setup.pixels[indices].float().div_(255)

    # ------------------------------------------------------------------------------------------ loss and gradient
    def view(self, x: torch.Tensor) -> torch.Tensor:
        """What the model sees of the perturbed images x = clamp(pixels / 255 + δ, 0, 1), (n, 3, H, W): x itself,
        or — in a robust run (``AttackSetup.robust``) — one random differentiable transformation of each image,
        drawn from the run's seeded generator (expectation over transformation: the steps ascend E_t[loss(f(t(x)))])."""
        robust = self.setup.robust
        return x if robust is None else robust.apply(x, self.setup.generator)

    def autocast(self):
        return autocast(self.device, self.setup.precision)

    def loss_per_image(self, logits: torch.Tensor, clean_labels: torch.Tensor,
                       clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The quantity ascended, per image (n,). Untargeted: min(CE(f(x+δ), k(x)), beta) — the clamped CE of
        the papers — or, with loss="logit", the negative logit of the clean label. Targeted: -CE(f(x+δ), target)
        (or the target's logit)."""
        logits = logits.float()
        target = self.setup.target
        if target is not None:
            if self.params.loss == "logit":
                return logits[:, target]
            return -F.cross_entropy(logits, torch.full_like(clean_labels, target), reduction="none")
        if self.params.loss == "logit":
            return -logits.gather(1, clean_labels[:, None])[:, 0]
        return F.cross_entropy(logits, clean_labels, reduction="none").clamp(max=self.params.beta)

    def loss_and_fooled(self, pixels: torch.Tensor, delta: torch.Tensor, clean_labels: torch.Tensor,
                        clean_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The differentiable part of a step, the one a compiler captures: per-image loss (n,) fp32 of
        clamp(pixels / 255 + δ, 0, 1) and the number of those images fooled (0-d int64).

        pixels: (n, 3, H, W) uint8; delta: (3, H, W) fp32 (a leaf that requires grad); clean_labels: (n,) k(x);
        clean_logits: (n, C) f(x) where the method uses them, else None. For an ensemble of M surrogates the loss
        is the mean of the members' losses, each against its own clean prediction (clean_labels (n, M), clean_logits
        (n, M, C)), and the fooled count the mean of theirs.
        """
        x = self.view((pixels.float() / 255 + delta).clamp(0, 1)).contiguous(memory_format=torch.channels_last)
        members = members_of(self.model)
        if len(members) == 1:
            with self.autocast():
                logits = self.model(x)
            return (self.loss_per_image(logits, clean_labels, clean_logits),
                    self.fooled(logits.detach(), clean_labels))
        losses, fooled = [], []
        for i, member in enumerate(members):
            with self.autocast():
                logits = member(x)
            member_logits = clean_logits[:, i] if clean_logits is not None else None
            losses.append(self.loss_per_image(logits, clean_labels[:, i], member_logits))
            fooled.append(self.fooled(logits.detach(), clean_labels[:, i]))
        return torch.stack(losses).mean(0), torch.stack(fooled).float().mean()

    def gradient(self, indices: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g = d/dδ mean_i loss(f(clamp(x_i + δ))) over ``indices``, in fp32.

        Returns (g (3, H, W), summed loss (0-d tensor), number of fooled images (0-d tensor)); all stay on the
        device (no sync). Large batches are split into chunks of ``chunk_size`` (set on out-of-memory).
        """
        gradient, loss_sum, fooled = self.gradient_sum(indices, delta)
        return gradient / len(indices), loss_sum, fooled

    def gradient_sum(self, indices: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
        """:meth:`gradient` before the division by ``len(indices)``: Σ_i d/dδ loss_i, the summed loss, the
        fooled count."""
        gradient = torch.zeros_like(delta)
        loss_sum = torch.zeros((), device=self.device)
        fooled = torch.zeros((), device=self.device)
        chunks = indices.split(self.chunk_size) if self.chunk_size else (indices,)
        for chunk in chunks:
            with threads_for(len(chunk) * delta.numel(), self.device):
                chunk_grad, losses, chunk_fooled = self._chunk_gradient(chunk, delta)
            gradient += chunk_grad
            loss_sum += losses.detach().sum()
            fooled += chunk_fooled
        return gradient, loss_sum, fooled

    def batch_gradient(self, indices: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
        """:meth:`gradient` over the global batch ``indices``: where a method reduces a gradient.

        One process: exactly :meth:`gradient`. Several (``setup.shard``): each rank sums the gradients of the
        batch's images it holds, one all_reduce adds the ranks' sums (with the loss sums and fooled counts), and
        the sum is divided by the whole batch's size — the same mean as in one process, up to float32 summation
        order (the ranks' partial sums are added in a different order: about 1e-7 relative, which flips the sign
        of an entry only where the gradient is within rounding of zero). Identical on every rank.
        """
        shard = self.setup.shard
        if shard is None:
            return self.gradient(indices, delta)
        local, _sizes = shard.local_share(indices)
        if len(local):
            summed, loss_sum, fooled = self.gradient_sum(local, delta)
        else:
            summed = torch.zeros_like(delta)
            loss_sum = torch.zeros((), device=self.device)
            fooled = torch.zeros((), device=self.device)
        summed, loss_sum, fooled = distributed.all_reduce_sum([summed, loss_sum, fooled], "all_reduce of the gradient")
        return summed / len(indices), loss_sum, fooled

    def _chunk_gradient(self, chunk: torch.Tensor, delta: torch.Tensor):
        pixels, clean_labels = self.setup.pixels[chunk], self.setup.clean_labels[chunk]
        clean_logits = self.setup.clean_logits[chunk] if self.uses_clean_logits else None
        if self._compiled is not None:
            try:
                if self.device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()  # the outputs of the last replay are consumed
                grad, losses, fooled = self._gradient_through(self._compiled, pixels, delta, clean_labels,
                                                              clean_logits)
                return grad.clone(), losses.clone(), fooled.clone()  # out of the CUDA graph's memory pool
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not end the run: go eager
                self.compile_error = f"{type(exc).__name__}: {first_line(exc)}"
                self._compiled = None
                log.warning("torch.compile failed, running eager from now on: %s", self.compile_error)
        return self._gradient_through(self.loss_and_fooled, pixels, delta, clean_labels, clean_logits)

    @staticmethod
    def _gradient_through(forward: Callable, pixels: torch.Tensor, delta: torch.Tensor, clean_labels: torch.Tensor,
                          clean_logits: torch.Tensor | None = None):
        leaf = delta.detach().requires_grad_(True)
        losses, fooled = forward(pixels, leaf, clean_labels, clean_logits)
        (grad,) = torch.autograd.grad(losses.sum(), leaf)
        return grad, losses.detach(), fooled

    @property
    def compiled(self) -> bool:
        """True while the compiled (on CUDA: graphed) gradient is in use."""
        return self._compiled is not None

    def fooled(self, logits: torch.Tensor, clean_labels: torch.Tensor) -> torch.Tensor:
        """Number of images counted as fooled: label changed (untargeted) or target reached (targeted)."""
        predicted = logits.argmax(1)
        if self.setup.target is not None:
            return (predicted == self.setup.target).sum()
        return (predicted != clean_labels).sum()

    # ------------------------------------------------------------------------------------------ the update
    def step_direction(self, gradient: torch.Tensor, use_momentum: bool = True) -> torch.Tensor:
        """The direction δ moves in: sign(g) under L∞ (a quantised step), g / ‖g‖₂ under L2.

        With momentum μ > 0: v = μ v + g / ‖g‖₁ and the step follows v instead of g.
        """
        momentum = getattr(self.params, "momentum", 0.0)
        if use_momentum and momentum > 0:
            normalised = gradient / gradient.abs().sum().clamp_min(1e-20)
            self.momentum_buffer = normalised if self.momentum_buffer is None else momentum * self.momentum_buffer + normalised
            gradient = self.momentum_buffer
        if self.setup.norm == "linf":
            return torch.sign(gradient)
        return gradient / gradient.norm().clamp_min(1e-20)

    def step_size(self) -> float:
        """Pixel units; the papers' default is 0.1 · eps (= 1/255 at eps 10/255)."""
        return self.params.step_size if self.params.step_size else 0.1 * self.setup.eps

    def apply(self, delta: torch.Tensor, gradient: torch.Tensor, use_momentum: bool = True) -> torch.Tensor:
        """δ ← Project(δ + step · direction(g)) onto the eps ball."""
        moved = delta + self.step_size() * self.step_direction(gradient, use_momentum)
        return metrics.project(moved, self.setup.eps, self.setup.norm)

    def update_statistics(self, gradient: torch.Tensor) -> dict[str, float]:
        """Stability statistics of the gradient that was turned into this update (docs: Metrics).

        grad_cosine: cos(gₜ, gₜ₋₁), adjacent steps. update_mean_cosine: cos(uₜ, mean(u₁ … uₜ₋₁)), the update's
        direction uₜ (sign(gₜ) for a sign step, gₜ / ‖gₜ‖₂ otherwise) against the running mean of the previous
        ones: whether the run keeps pushing the same way over many steps, not only between two (nan at the first
        step). Measured on CIFAR-10 ResNet-20 (``python bench/stability.py``; see that file for the table): it
        separates SGA from small-batch SGD-UAP at laptop scale where the adjacent cosine is near 0 for both."""
        sign_steps = self.setup.norm == "linf" and self.takes_sign_steps
        stats = {
            "grad_cosine": float("nan"), "sign_flip_rate": float("nan"), "update_mean_cosine": float("nan"),
            "quantisation_error": metrics.quantisation_error(gradient) if sign_steps else float("nan"),
        }
        if self.previous_gradient is not None:
            stats["grad_cosine"] = metrics.cosine(gradient, self.previous_gradient)
            stats["sign_flip_rate"] = metrics.sign_flip_rate(gradient, self.previous_gradient)
        self.previous_gradient = gradient.detach().clone()
        update = torch.sign(gradient) if sign_steps else gradient / gradient.norm().clamp_min(1e-20)
        if self.update_sum is not None:
            stats["update_mean_cosine"] = metrics.cosine(update, self.update_sum)
            self.update_sum += update
        else:
            self.update_sum = update.detach().float().clone()
        return stats

    def delta_statistics(self) -> dict[str, float]:
        stats = metrics.norms(self.delta)
        stats["saturation"] = metrics.saturation(self.delta, self.setup.eps) if self.setup.norm == "linf" else float("nan")
        stats["budget_use"] = metrics.budget_use(self.delta, self.setup.eps, self.setup.norm)
        stats["sign_ops"] = self.sign_ops
        return stats

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything this method needs to continue exactly where it stands, as torch's optimisers describe
        theirs: δ (3, H, W), the sign steps, the last gradient, the momentum buffer and the sum of the update
        directions (update_mean_cosine's; each None before the first step), the chunk size.
        Tensors are copies (detached; on the method's device), the rest plain numbers and text. A method with more
        state (an optimiser, a generator network, counters) adds its own to ``super().state_dict()``. The run's
        seeded generator and the loop's position are the run's to save (:mod:`uap_core.checkpoint`)."""
        return {"delta": copied(self.delta), "sign_ops": self.sign_ops,
                "previous_gradient": copied(self.previous_gradient), "momentum_buffer": copied(self.momentum_buffer),
                "update_sum": copied(self.update_sum), "chunk_size": self.chunk_size, "device_type": self.device.type}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of the same method with the same settings (on any device: tensors are
        moved to this one's; a chunk size lowered on out-of-memory is kept on the same kind of device only)."""
        self.restore_delta(state["delta"].to(self.device, torch.float32, copy=True))
        self.sign_ops = int(state["sign_ops"])
        self.previous_gradient = moved(state["previous_gradient"], self.device)
        self.momentum_buffer = moved(state["momentum_buffer"], self.device)
        self.update_sum = moved(state["update_sum"], self.device)
        if state["device_type"] == self.device.type:
            self.chunk_size = state["chunk_size"]

    def restore_delta(self, delta: torch.Tensor) -> None:
        """Make ``delta`` (3, H, W) on the device the current δ (a method whose optimiser holds δ copies it in)."""
        self.delta = delta

    # ------------------------------------------------------------------------------------------ to implement
    def step(self, indices: torch.Tensor) -> dict[str, float]:
        """One update of δ on the mini-batch ``indices``; returns the step's metrics (floats, one sync)."""
        raise NotImplementedError

    def plan(self, epochs: int) -> None:
        """Told by the run, before the first step, how many epochs it plans (the configured ones, or those a
        budget needs): a method with a schedule over the whole run (DM-UAP's growing radii) reads
        ``planned_epochs``. Without a run it stays ``default_epochs``."""
        self.planned_epochs = max(1, int(epochs))

    def end_epoch(self) -> bool:
        """Called after each epoch; True stops the run early (e.g. UAP reached its target fooling rate)."""
        return False


def copied(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists, tuples) replaced by a detached copy: a state a method
    hands out that its next step does not change."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((key, copied(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(copied(item) for item in value)
    return value


def moved(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """A restored tensor on ``device`` (None stays None)."""
    return None if tensor is None else tensor.to(device, copy=True)
