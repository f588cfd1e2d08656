"""SV-UAP — Khrulkov & Oseledets, "Art of singular vectors and universal adversarial perturbations", CVPR 2018.

Linearise a hidden layer ℓ of the network at the clean images, f_ℓ(x_i + ε) ≈ f_ℓ(x_i) + J_i ε, and take the
perturbation that the stacked Jacobian J = [J_1; …; J_n] of a small batch X stretches most: the (p, q)-singular
vector, maximise ‖J v‖_q subject to ‖v‖_p = 1. The Jacobian is taken at the clean images x_i (not at x_i + δ) and
stays fixed while v is iterated. Boyd's generalised power method (the paper's Algorithm 1):

    X = num_images fit images (64)                       # one fixed batch; J = stacked Jacobians of f_ℓ at X
    v = random, ‖v‖_p = 1
    repeat (iterations):                                 # one step each
        w = ψ_q(J v)                                     # ψ_r(x) = sign(x)|x|^(r−1), entrywise
        v = ψ_p'(Jᵀ w);  v = v / ‖v‖_p                   # p' = p/(p−1); p = ∞: ψ_1 = sign
    δ = ±eps · v / ‖v‖_p                                 # L∞: δ = ±eps · sign(Jᵀ w)

J v and Jᵀ w never form J (Algorithm 2/3 of the paper): J v = (J_i v)_i is one forward-mode pass
(``torch.func.jvp``) of the batch up to layer ℓ with the tangent v on every image — exact, and about half the
time of the double-backward trick of the official codes (a backward with a dummy cotangent, then a backward of
that; measured on CIFAR ResNet-20, 64 images, CPU: 0.05–0.07 s against 0.11–0.12 s, equal results); Jᵀ w =
Σ_i J_iᵀ w_i is one ordinary backward (forward + ``autograd.grad`` with cotangent w) of the batch up to ℓ. The
forward stops at ℓ (:class:`ActivationRecorder` with ``stop_after_last``), so the rest of the network never runs.

Defaults, from the paper and the two public codes (the authors' TensorFlow ``KhrulkovV/singular-fool`` and the
PyTorch reproduction ``slayff/art_of_vectors_pytorch``): p = ∞ (the threat model here: ``norm`` "linf"; p = 2
under "l2"), q = 10 (the PyTorch code's default; the TF code's ``get_adversary`` defaults to q = 5), a batch of
64 images (the paper's "only 64 images"), 20 power iterations (PyTorch code; TF code: 30), the start v: uniform
noise in (−0.5, 0.5), for p = ∞ its signs (TF code). Layer: the paper's best ImageNet layer for VGG-16/19 is
block2_pool (the PyTorch code's default too); here the layer is a position (see :func:`probe_layers`): the k-th
conv or max-pool layer in forward order, by default the first one whose output side is at most a quarter of the
input side (VGG: block2_pool exactly; ResNet-50 / GoogLeNet: the stem's max-pool; EfficientNet / MobileNet:
the first stride-4 depthwise conv; ViT: its patch embedding, its only conv), and for the CIFAR ResNets (no
down-sampling stem, so that rule would land in the last stage) the measured best early layer, the first conv of
stage 1's last block (see ``CIFAR_DEFAULT_LAYER``). The paper finds the best layers early; the ImageNet defaults
other than VGG's are by analogy, not measured here (no pretrained weights offline).

Where we differ from the paper / official code, and why:
- The sign of v is not fixed by the objective (‖J(−v)‖_q = ‖J v‖_q). After every iteration we keep, of +δ and
  −δ, the one that fools more of the same batch X (its label changed against k(x)); ties keep +δ. This reads only
  the 64 images already used and costs two forwards of the batch. The official codes return +v as it comes out.
  The iterate v itself is never flipped (the iteration is odd: −v gives −v_next), only δ.
- J v and Jᵀ w run in fp32 even when the run's precision is bf16 / fp16 (only the ±δ forwards use it): forward-mode
  AD does not go through autocast, and both products must be of the same matrix.
- ψ_q(J v) is taken of J v / max|J v| (the direction is unchanged: ψ_q is homogeneous and v is normalised
  afterwards); at q = 10 the raw |J v|^9 overflows fp32 on real networks.
- Several epochs continue the iteration from the current v on a new random batch of ``num_images`` (the PyTorch
  code's ``fit(n_batches > 1)``, which warm-starts the power method); the default is one epoch = one batch.
- The run keeps by default the δ with the best fit-set fooling ratio at the evaluations (``RunConfig.keep``),
  which reads up to 1,000 fit images; ``keep="last"`` keeps the δ of the last iteration, which saw only X.

Per step: loss = ‖J v‖_q of the v entering the step (the objective, with ‖v‖_p = 1: at p = ∞ every entry ±1);
image_gradients = 3 × batch, an upper bound: J v (one forward-mode pass) and Jᵀ w (one forward + backward)
each cost at most one image-gradient per image since only the network up to ℓ runs, and the two full forwards of
±δ for the sign at most one together (a forward is about a third of a forward + input-gradient backward).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Forward-mode AD (torch.func.jvp, below) TorchScript-compiles its decompositions on first use, parsing Python source
# with ast. On CPython 3.11 two threads parsing at once can fail ("AST constructor recursion depth mismatch",
# gh-106905) — as a run's worker thread did while Streamlit parsed a page in another. So they load here, at import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated": torch's own use, not ours
    import torch._decomp.decompositions_for_jvp  # noqa: F401,E402

from .. import metrics
from ..errors import ParameterError
from ..params import param
from .activations import ActivationRecorder, StopForward
from .base import AttackSetup, UAPAlgorithm, copied

# The CIFAR ResNets have no down-sampling stem: the quarter-side rule would pick layer3's first conv. Their default
# is the first conv of stage 1's last block (layer1[-1].conv1), the best early layer measured: held-out fooling
# ratio at 64 images, 20 iterations, q 10, eps 8/255, keep="last", 1,000 held-out images (random ±eps noise: 0.29
# on ResNet-20, 0.27 on ResNet-56). ResNet-20, k = 1..8, seeds 0/1: 0.21/0.23, 0.49/0.52, 0.26/0.24, 0.36/0.39,
# 0.74/0.72, **0.77/0.80** (k = 6), 0.56/0.63, 0.53/0.52; k = 9..19: 0.38-0.55. ResNet-56, seed 0, k = 2, 4, …, 16:
# 0.29, 0.41, 0.33, 0.58, 0.57, 0.63, 0.62, 0.63; **0.66** (k = 18), 0.60 (k = 19, the stage's last conv), 0.43
# and 0.46 (k = 20, 22: stage 2).
CIFAR_DEFAULT_LAYER = {"cifar_resnet20": 6, "cifar_resnet56": 18}


@dataclass
class SVUAPParams:
    num_images: int = param(64, "Images in the batch X whose stacked hidden-layer Jacobian is used (paper: 64).",
                            1, 100_000)
    iterations: int = param(20, "Power iterations per epoch (one step each; PyTorch code: 20, TF code: 30).",
                            1, 10_000)
    q: float = param(10.0, "q of the objective ‖J v‖_q (paper / PyTorch code: 10; TF code's default: 5).",
                     1.0, 100.0)
    layer: int = param(None, "Hidden layer ℓ: the k-th conv or max-pool layer in forward order (1 = the first "
                             "conv); empty: per architecture (VGG: block2_pool, the paper's best).", 1, 10_000)


def probe_layers(model: nn.Module) -> list[nn.Module]:
    """The candidate hidden layers ℓ: every ``nn.Conv2d`` and ``nn.MaxPool2d`` of ``model`` in registration order
    (the forward order for every model in :mod:`uap_core.models`). VGG-16's block2_pool is the 6th."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]


def psi(x: torch.Tensor, r: float) -> torch.Tensor:
    """ψ_r(x) = sign(x)|x|^(r−1) entrywise (ψ_1 = sign, ψ_2 = identity)."""
    if r == 1:
        return torch.sign(x)
    return torch.sign(x) * x.abs().pow(r - 1)


def lp_normalise(v: torch.Tensor, p: float) -> torch.Tensor:
    """v / ‖v‖_p (p = math.inf: v / max|v|); v unchanged where it is zero."""
    norm = v.abs().amax() if math.isinf(p) else v.norm(p=p)
    return v / norm.clamp_min(1e-30)


def q_norm(y: torch.Tensor, q: float) -> torch.Tensor:
    """‖y‖_q in fp32 without overflow: m · ‖y / m‖_q with m = max|y| (0-d tensor)."""
    m = y.abs().amax().clamp_min(1e-30)
    return m * (y / m).norm(p=q)


class SVUAP(UAPAlgorithm):
    name = "sv_uap"
    title = "SV-UAP (singular vectors of hidden-layer Jacobians, Khrulkov & Oseledets 2018)"
    summary = "The (∞, q)-singular vector of a hidden layer's Jacobian over 64 images, by the power method."
    paper = "Khrulkov & Oseledets, Art of singular vectors and universal adversarial perturbations, CVPR 2018"
    differs = ("δ's sign chosen per iteration by the fooling ratio on the same 64 images; J v scaled before ψ_q (fp32 "
               "overflow at q 10); always fp32; the layer chosen by position")
    family = "data-driven"
    supports_targeted = False
    default_epochs = 1
    uses_gradient_step = False  # J v and Jᵀ w are its own passes: nothing for torch.compile to capture
    supports_ensemble = False  # the Jacobian of one network's hidden layer
    robust_refusal = ("its δ is a singular vector of the clean images' layer Jacobian, a fixed linear map: no "
                      "perturbed image passes through the network to be transformed (use a gradient method such as "
                      "sgd_uap)")
    takes_sign_steps = False  # δ is replaced by eps · v/‖v‖, not moved by sign steps
    Params = SVUAPParams

    def __init__(self, setup: AttackSetup, params) -> None:
        super().__init__(setup, params)
        if setup.target is not None:
            raise ParameterError("sv_uap is untargeted only; leave the target class empty")
        self.p = math.inf if setup.norm == "linf" else 2.0
        self.p_dual = 1.0 if math.isinf(self.p) else self.p / (self.p - 1)
        self.layer_index, self.layer = self.choose_layer()
        self.v = self.initial_v()

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus the power method's iterate v."""
        return {**super().state_dict(), "v": copied(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.v = state["v"].to(self.device, copy=True)

    # ------------------------------------------------------------------------------------------ set-up
    def choose_layer(self) -> tuple[int, nn.Module]:
        """(k, module): ``params.layer`` or the architecture's default (see the module docstring)."""
        layers = probe_layers(self.model)
        if not layers:
            raise ParameterError("sv_uap needs a network with nn.Conv2d / nn.MaxPool2d layers")
        k = self.params.layer
        if k is None:
            k = CIFAR_DEFAULT_LAYER.get(getattr(self.model.spec, "name", ""), None) or self.quarter_side_layer(layers)
        if not 1 <= k <= len(layers):
            raise ParameterError(f"layer = {k} is out of range; this network has {len(layers)} conv / max-pool "
                                 f"layers (allowed [1, {len(layers)}])")
        return k, layers[k - 1]

    def quarter_side_layer(self, layers: list[nn.Module]) -> int:
        """1-based index of the first probe layer whose output side is at most a quarter of the input side (one
        forward of a grey image, stopped there); the last probe layer if none is."""
        height = self.setup.pixels.shape[2]
        sides: list[int] = []

        def record(module, inputs, output) -> None:
            sides.append(output.shape[-1])
            if output.shape[-1] * 4 <= height:
                raise StopForward

        handles = [layer.register_forward_hook(record) for layer in layers]
        try:
            with torch.no_grad():
                self.model(torch.full((1, *self.setup.pixels.shape[1:]), 0.5, device=self.device))
        except StopForward:
            return len(sides)
        finally:
            for handle in handles:
                handle.remove()
        return len(layers)

    def initial_v(self) -> torch.Tensor:
        """v₀ (3, H, W) fp32: uniform noise in (−0.5, 0.5) from the seeded generator (on the CPU), its signs for
        p = ∞ (the TF code), else normalised to ‖v‖_p = 1."""
        generator = self.setup.generator
        noise = torch.rand(self.setup.pixels.shape[1:], generator=generator, device=generator.device) - 0.5
        noise = noise.to(self.device)
        return torch.sign(noise) if math.isinf(self.p) else lp_normalise(noise, self.p)

    # ------------------------------------------------------------------------------------------ the batches
    def batch_size(self) -> int:
        return min(int(self.params.num_images), self.num_images)

    def steps_per_epoch(self) -> int:
        return int(self.params.iterations)

    def image_gradients_per_step(self) -> int:
        """3 × batch, an upper bound: J v and Jᵀ w (each ≤ one image-gradient per image: only the network up to ℓ
        runs) and the two forwards of ±δ for the sign (≤ one together)."""
        return 3 * self.batch_size()

    def step_costs(self) -> list[int]:
        """``iterations`` steps on the same batch X."""
        return [self.image_gradients_per_step()] * self.steps_per_epoch()

    def epoch_batches(self) -> list[torch.Tensor]:
        """One batch X of ``num_images`` fit images (the first of a seeded permutation), once per power
        iteration: the Jacobian is fixed within an epoch."""
        batch = self.permutation(self.num_images)[: self.batch_size()]
        return [batch] * self.steps_per_epoch()

    # ------------------------------------------------------------------------------------------ J v and Jᵀ w
    def layer_output(self, x: torch.Tensor) -> torch.Tensor:
        """f_ℓ(x) (n, C, h, w) fp32 for x (n, 3, H, W) in [0, 1]; the forward stops at ℓ. Always in fp32, whatever
        the run's precision: forward-mode AD does not pass through autocast (the tangent is not cast: a dtype
        error in the first conv), and J v and Jᵀ w must be products with the same matrix."""
        with ActivationRecorder([self.layer], stop_after_last=True) as recorder:
            outputs = recorder.run(self.model, x)
        return outputs[-1].float()

    def jacobian_vector(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(J_i v)_i, (n, C, h, w) fp32: forward-mode AD with the tangent v (3, H, W) on every image."""
        tangent = v.to(x.dtype).expand_as(x).contiguous()
        _, jv = torch.func.jvp(self.layer_output, (x,), (tangent,))
        return jv.float()

    def jacobian_transpose_vector(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Σ_i J_iᵀ w_i, (3, H, W) fp32: one backward of ⟨f_ℓ(x), w⟩ with respect to x. w: (n, C, h, w)."""
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.layer_output(leaf), leaf, grad_outputs=w)
        return grad.float().sum(0)

    def power_iteration(self, indices: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step v → ψ_p'(Jᵀ ψ_q(J v)) / ‖·‖_p on the images ``indices``. Returns (new v (3, H, W),
        ‖J v‖_q of the given v (0-d)). Chunked by ``chunk_size``: all of J v first (ψ_q is scaled by the global
        max|J v|), then Jᵀ w chunk by chunk."""
        chunks = indices.split(self.chunk_size) if self.chunk_size else (indices,)
        jv = [self.jacobian_vector(self.images(chunk), v) for chunk in chunks]
        scale = torch.stack([part.abs().amax() for part in jv]).amax().clamp_min(1e-30)
        objective = q_norm(torch.cat([part.flatten() for part in jv]), self.params.q)
        jtw = torch.zeros_like(v)
        for chunk, part in zip(chunks, jv):
            jtw += self.jacobian_transpose_vector(self.images(chunk), psi(part / scale, self.params.q))
        new_v = lp_normalise(psi(jtw, self.p_dual), self.p)
        if not bool(new_v.abs().amax() > 0):  # Jᵀ w = 0 (a dead layer): keep the last v
            new_v = v
        return new_v, objective

    # ------------------------------------------------------------------------------------------ the step
    def fooled_count(self, indices: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Images of ``indices`` whose label clamp(x + δ) differs from k(x) (0-d int64, on the device)."""
        fooled = torch.zeros((), dtype=torch.long, device=self.device)
        chunks = indices.split(self.chunk_size) if self.chunk_size else (indices,)
        with torch.no_grad():
            for chunk in chunks:
                x = (self.images(chunk) + delta).clamp(0, 1).contiguous(memory_format=torch.channels_last)
                with self.autocast():
                    logits = self.model(x)
                fooled += self.fooled(logits, self.setup.clean_labels[chunk])
        return fooled

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        old_v = self.v
        self.v, objective = self.power_iteration(indices, old_v)
        delta = self.setup.eps * lp_normalise(self.v, self.p)
        plus, minus = self.fooled_count(indices, delta), self.fooled_count(indices, -delta)
        flipped = bool(minus > plus)
        self.delta = -delta if flipped else delta
        n = len(indices)
        stats = {"loss": objective.item(), "batch_fooling_ratio": max(plus.item(), minus.item()) / n,
                 "image_gradients": 3 * n, "flipped_sign": float(flipped),
                 "v_sign_changes": (torch.sign(self.v) != torch.sign(old_v)).float().mean().item(),
                 "v_cosine": metrics.cosine(self.v, old_v)}
        stats.update(self.update_statistics(self.v - old_v))
        stats.update(self.delta_statistics())
        return stats
