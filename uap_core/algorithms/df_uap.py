"""DF-UAP — Zhang, Benz, Imtiaz, Kweon, "Understanding Adversarial Examples from the Mutual Influence of Images and
Perturbations", CVPR 2020. Official code: phibenz/uap_virtual_data.pytorch (read for the defaults below).

δ is a parameter (init 0) that Adam moves on a bounded logit-margin loss, clipped into the eps ball after every
step:

    δ = 0; opt = Adam([δ], lr)                               # lr 0.005, betas (0.9, 0.999)
    repeat (2,000 iterations in the paper):
        X = next batch of 32 fit images; y = k(X)            # the clean predictions
        z = f(clamp(X + δ, 0, 1))                            # logits
        untargeted: L = mean clamp(z_y − max_{j≠y} z_j, min=−κ)             # κ = 10
        targeted t: L = mean clamp(max_{j≠t} z_j.detach() − z_t, min=−κ)    # only z_t is pushed
        opt.step() on ∇_δ L;  δ = clamp(δ, −eps, eps)

Once an image is pushed past the boundary by a margin κ its loss is constant (clamped) and it stops pulling on δ,
so the remaining images steer the update. The images only have to be images the model has an opinion about: the
labels are the model's own clean predictions, so any proxy data (COCO, VOC, Places365 in the paper) serves — the
paper's "data from the model" point.

Defaults, from the official code: batch 32; lr 0.005 (the run script ``run.sh``; the argparse default is 0.001);
κ = 10 (``--confidence 10`` in ``run.sh``; argparse default 0); Adam's other settings are PyTorch's defaults;
2,000 iterations. Here a run counts epochs over the fit set (steps_per_epoch = ceil(N / 32)): the default of 6
epochs gives 6 · ceil(10,000 / 32) = 1,878 iterations on the paper's 10,000 images — about the official 2,000.

Where we differ from the official code, and why:
- y is the clean prediction k(x) of the fit image; the official training loop takes y from the data loader (the
  ground truth on ImageNet; on proxy data the official run script only runs the targeted attack). With y = k(x) the
  loss needs no labels and matches our fooling ratio (label changed against the clean prediction).
- x + δ is clamped to [0, 1] (as everywhere here); the official module adds δ to the un-normalised image and feeds
  it on without clamping.
- The official loss masks the reference class by subtracting 10,000 before the max; we mask with −inf (the same
  unless a logit is below −10,000). Targeted: the detached term is the max over the *other* classes, as in the
  official ``BoundedLogitLossFixedRef``; untargeted nothing is detached (``BoundedLogitLoss_neg``).
- Data: the official loader draws 2,000 batches from a whole dataset (ImageNet train or Places365, each image
  resized and randomly cropped), so its 64,000 draws are mostly distinct images seen once; a run here re-visits a
  fixed fit set epoch by epoch (``RunConfig.augment`` adds random crop/flip views where wanted).
- The reported "loss" is the ascended quantity −L (the base ascends; Adam is handed −g: the paper's update).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..params import param
from .adam import AdamUAPAlgorithm


@dataclass
class DFUAPParams:
    batch_size: int = param(32, "Images per Adam step (official: 32).", 1, 100_000)
    lr: float = param(0.005, "Adam learning rate in pixel units (official run script: 0.005; its argparse "
                             "default: 0.001).", 1e-6, 1.0)
    kappa: float = param(10.0, "κ: the margin loss is clamped at −κ, so images fooled by a margin κ stop pulling "
                               "(official: 10).", 0.0, 1e4)


def others_max(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """max_{j≠ref} z_j per image, (n,) fp32. logits: (n, C); reference: (n,) int64 class indices."""
    is_reference = torch.nn.functional.one_hot(reference, logits.shape[1]).bool()
    return logits.float().masked_fill(is_reference, float("-inf")).amax(1)


class DFUAP(AdamUAPAlgorithm):
    name = "df_uap"
    title = "DF-UAP (Adam on a bounded logit margin, Zhang et al. 2020)"
    summary = "Adam on δ minimising the clean label's clamped logit margin; works from any proxy images."
    paper = ("Zhang, Benz, Imtiaz, Kweon, Understanding Adversarial Examples from the Mutual Influence of Images "
             "and Perturbations, CVPR 2020")
    differs = ("Labels = clean predictions (official loop: the loader's labels); x + δ clamped to [0, 1] (official: "
               "not clamped); epochs over a fixed fit set instead of 2,000 randomly cropped batches")
    family = "data-driven"
    supports_targeted = True
    default_epochs = 6  # 6 · ceil(10,000 / 32) = 1,878 iterations ≈ the official 2,000
    Params = DFUAPParams

    def loss_per_image(self, logits: torch.Tensor, clean_labels: torch.Tensor,
                       clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """−L per image (n,) fp32 (ascended by the base; Adam then minimises L). logits: (n, C) of clamp(x + δ).

        Untargeted: L = clamp(z_y − max_{j≠y} z_j, min=−κ) with y = k(x) (clean_labels).
        Targeted t: L = clamp(max_{j≠t} z_j (detached) − z_t, min=−κ)."""
        logits = logits.float()
        kappa = float(self.params.kappa)
        if self.setup.target is None:
            own = logits.gather(1, clean_labels[:, None])[:, 0]
            loss = (own - others_max(logits, clean_labels)).clamp(min=-kappa)
        else:
            targets = torch.full_like(clean_labels, self.setup.target)
            own = logits[:, self.setup.target]
            loss = (others_max(logits, targets).detach() - own).clamp(min=-kappa)
        return -loss
