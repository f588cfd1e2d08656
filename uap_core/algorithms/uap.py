"""UAP — Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, "Universal adversarial perturbations", CVPR 2017.

Greedy accumulation of minimal per-image (DeepFool) perturbations, projected onto the norm ball:

    v = 0
    repeat (passes) until the fooling ratio on the fit set >= 1 - delta, or max passes:
        for x_i in the shuffled fit set:
            if k(x_i + v) == k(x_i):                   # not fooled yet
                dv, iterations = DeepFool(x_i + v)
                if iterations < max_iter - 1:          # DeepFool converged
                    v = Project(v + dv, norm, xi)

One "step" here is a chunk of ``images_per_step`` fit images visited in order (for live progress); one epoch
is one pass. Untargeted only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import metrics
from ..cpu_threads import threads_for
from ..evaluation import predict_labels
from ..params import param
from .base import UAPAlgorithm


@dataclass
class UAPParams:
    target_fooling_rate: float = param(0.8, "Stop once the fit-set fooling ratio reaches this (1 - delta; paper: "
                                            "delta = 0.2).", 0.0, 1.0)
    overshoot: float = param(0.02, "DeepFool overshoot.", 0.0, 1.0)
    max_iter: int = param(10, "DeepFool's maximum iterations per image.", 2, 1000)
    num_candidates: int = param(10, "DeepFool considers the top this-many classes.", 2, 1000)
    images_per_step: int = param(10, "Fit images visited per reported step (progress only, not in the paper).",
                                 1, 100_000)


class UAP(UAPAlgorithm):
    name = "uap"
    title = "UAP (DeepFool accumulation, Moosavi-Dezfooli et al. 2017)"
    summary = "Adds each not-yet-fooled image's minimal DeepFool perturbation, projected onto the budget."
    paper = "Moosavi-Dezfooli et al., Universal adversarial perturbations, CVPR 2017"
    differs = "Pass cap 10 (the MATLAB code's; the Python code has none); x + δ clamped to [0, 1]"
    Params = UAPParams
    uses_gradient_step = False  # DeepFool per image: data-dependent, nothing to compile
    supports_targeted = False
    supports_ensemble = False  # DeepFool needs one classifier's decision boundary
    robust_refusal = ("DeepFool adds the minimal step to one image's nearest decision boundary; that geometry has no "
                      "expectation over random transformations (use a gradient method such as sgd_uap)")
    default_epochs = 10  # passes: the MATLAB code's cap (the Python code has none; ~5 is typical)

    def batch_size(self) -> int:
        return min(int(self.params.images_per_step), self.num_images)

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        before = self.delta.clone()
        already_fooled = converged = attempted = spent = 0
        for index in indices.tolist():
            x = self.images(torch.tensor([index], device=self.device))
            clean_label = int(self.setup.clean_labels[index])
            dv, iterations, label = self.deepfool(x, self.delta, stop_unless=clean_label)
            spent += iterations * self.params.num_candidates  # each iteration: a backward over that many copies
            if label != clean_label:
                already_fooled += 1
                continue
            attempted += 1
            if iterations < self.params.max_iter - 1:
                converged += 1
                self.delta = metrics.project(self.delta + dv[0], self.setup.eps, self.setup.norm)
        change = self.delta - before
        stats = {"loss": float("nan"), "batch_fooling_ratio": already_fooled / len(indices),
                 "image_gradients": spent, "deepfool_converged": converged, "deepfool_images": attempted}
        if change.abs().max() > 0:
            stats.update(self.update_statistics(change))
            stats["quantisation_error"] = float("nan")  # no sign step in UAP
        else:
            stats.update({"grad_cosine": float("nan"), "sign_flip_rate": float("nan"), "quantisation_error": float("nan")})
        stats.update(self.delta_statistics())
        return stats

    def deepfool(self, x: torch.Tensor, v: torch.Tensor, stop_unless: int | None = None
                 ) -> tuple[torch.Tensor, int, int]:
        """DeepFool (Moosavi-Dezfooli et al. 2016) on the image clamp(x + v), as the official code runs it.

        x: (1, 3, H, W) in [0, 1]. Returns ((1 + overshoot) · r_total, iterations used, label of x + v).
        stop_unless: a label; when clamp(x + v) is not classified as it (the image is fooled already: the UAP pass
        skips it), return after the first forward pass with 0 iterations — no gradient is spent on it.
        Each iteration computes the gradients of the top ``num_candidates`` logits in one backward pass over
        that many copies of the image.
        """
        count = self.params.num_candidates
        overshoot = self.params.overshoot
        image = (x + v).clamp(0, 1)
        r_total = torch.zeros_like(image)
        perturbed = image
        candidates = label = None
        iterations = 0
        while True:
            copies = perturbed.expand(count, -1, -1, -1).clone().requires_grad_(True)
            with self.autocast(), threads_for(copies.numel(), self.device):
                logits = self.model(copies.contiguous(memory_format=torch.channels_last)).float()
            if candidates is None:
                candidates = logits[0].topk(min(count, logits.shape[1])).indices
                label = int(candidates[0])
                if stop_unless is not None and label != stop_unless:
                    break
            if int(logits[0].argmax()) != label or iterations >= self.params.max_iter:
                break
            chosen = logits[torch.arange(len(candidates), device=self.device), candidates]
            with threads_for(copies.numel(), self.device):
                (grads,) = torch.autograd.grad(chosen.sum(), copies)
            w = (grads[1:len(candidates)] - grads[0]).flatten(1)          # w_k = ∇f_k − ∇f_orig
            f = (chosen[1:] - chosen[0]).detach()                          # f_k = f_k(x) − f_orig(x)
            w_norm = w.norm(dim=1).clamp_min(1e-12)
            best = int((f.abs() / w_norm).argmin())                         # l = argmin |f_k| / |w_k|
            r = (f[best].abs() + 1e-4) / w_norm[best] ** 2 * w[best]         # r = (|f_l| + 1e-4) / |w_l|² · w_l
            r_total = r_total + r.view_as(image)
            perturbed = (image + (1 + overshoot) * r_total).clamp(0, 1)
            iterations += 1
        return (1 + overshoot) * r_total, iterations, label

    def end_epoch(self) -> bool:
        """One pass done: stop when the fooling ratio on the whole fit set reaches the target."""
        perturbed = predict_labels(self.model, self.setup.pixels, self.delta, self.setup.precision)
        self.last_fit_fooling_ratio = metrics.fooling_ratio(self.setup.clean_labels, perturbed)
        return self.last_fit_fooling_ratio >= self.params.target_fooling_rate

