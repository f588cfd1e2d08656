"""GAP — Poursaeed, Katsman, Gao, Belongie, "Generative Adversarial Perturbations", CVPR 2018 (universal,
classification); official code ``OmidPoursaeed/Generative_Adversarial_Perturbations``, ``GAP_clf.py`` with
``--perturbation_type universal``.

A generator G (the ResNet generator of :mod:`.generators`) maps ONE fixed noise image z to the perturbation; the
generator's weights are what is trained, δ = scale(G(z)) is what is used::

    z ~ U(0, 1)^(1×3×H×W), drawn once;  G's weights ~ weights_init;  opt = Adam(G, lr 2e-4, betas (0.5, 0.999))
    for each epoch, for each batch X (size 30, shuffled) of the fit set:
        y = argmin f(X)                       # untargeted: each clean image's LEAST-likely class
                                              # targeted: y = t for every image
        δ = scale(G(z))                       # L∞: δ_c = eps · G_c(z) / max|G_c(z)| for each channel c
        L = log( mean_i CE(f(clamp(X_i + δ, 0, 1)), y_i) )     # minimised
        opt.step(∇_G L)

Defaults from ``GAP_clf.py``: batch 30, Adam lr 2e-4, β1 0.5 (β2 0.999), 10 epochs, ngf 64, the generator's default
6 residual blocks, batch norm, ReLU; log of the batch-*mean* cross-entropy (``torch.log(nn.CrossEntropyLoss()(…))``)
toward the least-likely class of the clean image (``torch.min`` of the clean logits) or the target.

How the gradient is taken here. The classifier part runs through the shared, chunked, compile-able
:meth:`UAPAlgorithm.gradient` with ``loss_per_image = −CE_i(y_i)``: it returns g = ∂ mean_i(−CE_i)/∂δ and Σ(−CE_i).
With m = mean_i CE_i = −Σ(−CE_i)/n, the exact δ-gradient of L = log m is ∂L/∂δ = −g / m; it is pushed back
through the scaling and G with ``torch.autograd.backward(δ, grad_tensors=∂L/∂δ)``, then Adam steps G's weights.
This is the gradient of the official loss, exactly (not a per-image sum of logs).

Where and why this differs from the official code:

- **Scaling, pixel space.** The official code maps the tanh output t to ((t + 1)/2 − mean_c)/std_c (normalised
  units of ImageNet's mean/std) and multiplies channel c by min(1, (mag/255)/(std_c · max|·|)): in pixel units
  every channel then has L∞ norm mag/255 whenever it exceeded the budget — from the start at the official
  initialisation, where tanh's output spans most of (−1, 1), i.e. ~±2 normalised against a budget of ~0.17.
  Here δ lives in pixel units and the classifier wrapper normalises, so channel c is scaled directly,
  δ_c = eps · t_c / max|t_c| (``scaling="channel"``, the default): each channel at exactly eps, as there (here
  an equality always, scaling up too, so that ‖δ‖∞ = eps after every step). Unlike there, t is not shifted
  first: the official δ_c is proportional to t_c + 1 − 2·mean_c (+0.03, +0.09, +0.19 for ImageNet's means, on
  tanh's range of 2) — an artefact of one dataset's normalisation, a constant the generator can produce or undo.
  ``scaling="global"``: δ = eps · t / max|t| (only the largest channel reaches eps). L2 budget:
  δ = eps · t / ‖t‖₂ (on the sphere).
- **Gradient through the scaling.** The official code rescales ``delta_im.data`` in place, so its backward treats
  the shift and the scaling as the identity: G's output receives ∂L/∂δ (normalised units) unscaled, and the
  dependence of max|t_c| on t is ignored. Here the backward goes through the scaling exactly — per channel a
  positive factor eps/max|t_c| times the official direction, plus the max's own (single-element) term. Adam is
  insensitive to a constant factor; the loss is the official one.
- **Batch norm.** The official code tiles z 30 times and runs G in train mode: batch statistics of 30 identical
  copies are those of one z, so G(z) with batch 1 is the same computation (used here). For testing and saving it
  switches to ``netG.eval()``, i.e. to the *running averages* (momentum 0.1) of those statistics — a lagged
  version of the trained function. Here the norms keep no running averages (``track_running_stats=False``): the
  δ that is trained is the δ that is evaluated and saved, with no train/eval gap.
- **Noise.** The official z is U(0, 255) per pixel; here U(0, 1) (the project's pixel range). The first convolution
  is followed by batch norm (on batch statistics), which removes that scale up to the norm's 1e-5 epsilon.
- **Clamping.** The official code clamps x + δ per channel to the batch's own min/max in normalised units;
  here to the valid pixel range [0, 1] as every method of the project.
- **Epoch length.** The official "epoch" is ``MaxIter = 50`` batches (1,500 images); here an epoch is one pass over
  the fit set (⌈N/30⌉ steps), the project's convention. 10 official epochs = 500 steps = 15,000 image-gradients.
- **Artifact.** δ = scale(G(z)) is what the run keeps and saves; the generator's weights are not saved.
- **Cost.** ``image_gradients`` counts the classifier's forward + backward over the batch, as for every method; the
  generator's own forward + backward (one each per step, on one H×W image) is extra and not counted. At 32 px,
  ngf 64, 6 blocks it took ~70 % of ResNet-20's forward + backward over a batch of 30 (measured on the CPU); at
  224 px it is ~27 GMAC forward (~80 GMAC with the backward): ~a fifth of ResNet-50's cost over 30 images, about
  twice EfficientNet-Lite0's. ``ngf`` / ``n_blocks`` make it cheaper.
- The generator runs in fp32 (``precision`` applies to the classifier only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..params import param
from .base import AttackSetup, UAPAlgorithm, copied
from .generators import ResnetGenerator, init_weights


@dataclass
class GAPParams:
    batch_size: int = param(30, "Images per generator update (official 30).", 1, 100_000)
    lr: float = param(2e-4, "Adam learning rate of the generator's weights (official 2e-4).", 1e-7, 1.0)
    beta1: float = param(0.5, "Adam β1 of the generator's optimiser (official 0.5; β2 0.999).", 0.0, 0.999)
    ngf: int = param(64, "Generator width: filters of its first convolution (official 64; 4·ngf at the bottleneck).",
                     1, 256)
    n_blocks: int = param(6, "Residual blocks at the generator's bottleneck (official 6).", 0, 32)
    scaling: str = param("channel", "L∞ scaling of the generator's output: each channel to eps ('channel', as the "
                         "official code) or the whole δ by its largest entry ('global').", choices=("channel", "global"))


class GAP(UAPAlgorithm):
    name = "gap"
    title = "GAP (generative adversarial perturbations, Poursaeed et al. 2018)"
    summary = ("A ResNet generator maps one fixed noise image to δ; Adam trains it to push images to their "
               "least-likely class.")
    paper = "Poursaeed, Katsman, Gao, Belongie, Generative Adversarial Perturbations, CVPR 2018"
    family = "generative"
    differs = ("δ scaled per channel to exactly eps in pixel space with the exact gradient through the scaling; batch "
               "norm on z's own statistics (no eval-mode running averages); z ~ U(0, 1); epoch = one pass over the fit set")
    Params = GAPParams
    supports_targeted = True
    default_epochs = 10
    uses_gradient_step = True  # the classifier part goes through UAPAlgorithm.gradient (compile-able)
    uses_clean_logits = True  # the least-likely class of each clean fit image
    takes_sign_steps = False

    def __init__(self, setup: AttackSetup, params) -> None:
        super().__init__(setup, params)
        rng = setup.generator
        height, width = setup.pixels.shape[2:]
        network = ResnetGenerator(ngf=int(params.ngf), n_blocks=int(params.n_blocks))
        init_weights(network, rng)  # on the CPU, from the seeded generator
        self.network = network.to(self.device).train()
        # the one fixed input z ~ U(0, 1), (1, 3, H, W)
        self.noise = torch.rand((1, 3, height, width), generator=rng, device=rng.device).to(self.device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=float(params.lr),
                                          betas=(float(params.beta1), 0.999))
        self._graph_delta: torch.Tensor | None = None  # scale(G(z)) with its graph to G's weights
        self._generate()

    def state_dict(self) -> dict[str, Any]:
        """The base's state plus the generator's weights, its Adam state and the fixed noise image z."""
        return {**super().state_dict(), "network": copied(self.network.state_dict()),
                "optimizer": copied(self.optimizer.state_dict()), "noise": copied(self.noise)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore G, its optimiser and z, then δ = scale(G(z)) (on the same device: the saved δ, bit for bit)."""
        super().load_state_dict(state)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise = state["noise"].to(self.device, copy=True)
        self._graph_delta = None
        self._generate()

    # ------------------------------------------------------------------------------------------ δ = scale(G(z))
    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """raw: G(z), (1, 3, H, W) in (−1, 1) → δ (3, H, W) in pixel units: L∞ per channel (or globally) to
        exactly eps, L2 onto the sphere of radius eps. Differentiable."""
        t = raw[0]
        eps = self.setup.eps
        if self.setup.norm == "l2":
            return t / t.norm().clamp_min(1e-20) * eps
        if self.params.scaling == "channel":
            peak = t.abs().amax(dim=(1, 2), keepdim=True)
        else:
            peak = t.abs().max()
        return t / peak.clamp_min(1e-20) * eps  # t/peak is exactly ±1 at the peak, so max|δ| == eps exactly

    def _generate(self) -> None:
        """Forward G(z) with the current weights; keep the graph for the next step's backward, δ detached."""
        with torch.enable_grad():
            self._graph_delta = self.scale(self.network(self.noise).float())
        self.delta = self._graph_delta.detach()

    # ------------------------------------------------------------------------------------------ the loss
    def loss_per_image(self, logits: torch.Tensor, clean_labels: torch.Tensor,
                       clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """−CE(f(x + δ), y) per image (n,): y the clean image's least-likely class (argmin of ``clean_logits``), or
        the target. Ascending this is descending the CE that GAP minimises (the log is applied in :meth:`step`)."""
        logits = logits.float()
        if self.setup.target is not None:
            labels = torch.full_like(clean_labels, self.setup.target)
        else:
            labels = clean_logits.argmin(1)
        return -F.cross_entropy(logits, labels, reduction="none")

    # ------------------------------------------------------------------------------------------ the update
    def step(self, indices: torch.Tensor) -> dict[str, float]:
        if self._graph_delta is None:
            self._generate()
        g, loss_sum, fooled = self.gradient(indices, self.delta)  # g = ∂ mean(−CE_i)/∂δ
        n = len(indices)
        mean_ce = (-loss_sum / n).clamp_min(1e-12)
        delta_gradient = -g / mean_ce  # ∂ log(mean CE)/∂δ
        self.optimizer.zero_grad(set_to_none=True)
        try:
            torch.autograd.backward(self._graph_delta, grad_tensors=delta_gradient)
        except torch.OutOfMemoryError:
            self._graph_delta = None  # freed in part: the run's retry of this step regenerates it (G not stepped yet)
            raise
        self.optimizer.step()
        self._graph_delta = None
        self._generate()
        stats = {"loss": torch.log(mean_ce).item(), "batch_fooling_ratio": (fooled / n).item(),
                 "image_gradients": n, "mean_ce": mean_ce.item()}
        stats.update(self.update_statistics(delta_gradient))
        stats.update(self.delta_statistics())
        return stats
