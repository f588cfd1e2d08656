"""Artificial prior images for the data-free methods: what they feed the network in place of real images.

All images are (n, 3, H, W) float32 pixel images in [0, 1], drawn from the run's seeded generator on the CPU (the
same draws on every device) and then moved to the device.

- :func:`range_images` — GD-UAP's "range" prior: Gaussian noise images around the image the network sees as zero
  (its normalisation mean; the official code's ILSVRC mean), per-channel standard deviations (62, 58, 52)/255 for
  R, G, B (the official ``make_gaussian_noise.py``: sd 52, 58, 62 in BGR order), clipped to [0, 1].
- :func:`gaussian_images` — the same with any mean / standard deviation (TRM-UAP's Gaussian prior).
- :func:`jigsaw_images` — TRM-UAP's jigsaw images: ``cuts`` random cut positions on each axis split the image into
  (cuts + 1)² rectangles, each filled with one random colour (integers 0–255 per channel), then median-filtered
  with a disk (official ``functions.shuffle`` + ``skimage.filters.median(·, disk(5))`` at 224 px).
- :func:`trm_gauss_curriculum`, :func:`trm_jigsaw_curriculum` — TRM-UAP's curriculum (official ``strategy.py``): as
  the iterations go, the Gaussian images get noisier (std 10 → 127 on the 0–255 scale), the jigsaw images get more
  pieces, and the prior batch doubles at fixed iterations.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

GD_UAP_RANGE_STD = (62 / 255, 58 / 255, 52 / 255)  # R, G, B (official: sd = [52, 58, 62] for B, G, R)


def gaussian_images(n: int, shape: Sequence[int], mean: Sequence[float], std: Sequence[float],
                    generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """n images (n, 3, H, W) in [0, 1]: per-pixel N(mean_c, std_c²) per channel c, clipped to [0, 1]. A fresh draw
    on every call. mean, std: three floats in pixel units; shape: (3, H, W)."""
    noise = torch.randn((n, *shape), generator=generator, device=generator.device)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (noise * std_t + mean_t).clamp_(0, 1).to(device)


def range_images(n: int, shape: Sequence[int], mean: Sequence[float], generator: torch.Generator,
                 device: torch.device | str) -> torch.Tensor:
    """GD-UAP's range prior: :func:`gaussian_images` with the official standard deviations, around ``mean`` (the
    image the network sees as zero: its normalisation mean)."""
    return gaussian_images(n, shape, mean, GD_UAP_RANGE_STD, generator, device)


def median_filter_disk(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Median over a disk of ``radius`` pixels (the points with dy² + dx² ≤ radius²: 81 of them at radius 5), per
    channel, edges replicated (skimage's default mode "nearest"). images: (n, C, H, W) float; same shape out."""
    if radius <= 0:
        return images
    k = 2 * radius + 1
    offsets = torch.arange(k) - radius
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).flatten()
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):  # one image at a time: the unfolded windows of a 224-px image are ~50 MB
        padded = F.pad(images[i][:, None], (radius,) * 4, mode="replicate")  # (C, 1, H + 2r, W + 2r)
        windows = F.unfold(padded, k)[:, disk]  # (C, |disk|, H·W)
        out[i] = windows.median(dim=1).values.view(c, h, w)
    return out


def jigsaw_images(n: int, shape: Sequence[int], cuts: int, generator: torch.Generator,
                  device: torch.device | str, median_radius: int | None = None) -> torch.Tensor:
    """n jigsaw images (n, 3, H, W) in [0, 1].

    Per image: ``cuts`` random cut rows and columns, each uniform in 0..H (0..W), with 0 always a cut (official
    ``get_ranlist``), split the image into (cuts + 1)² rectangles (empty where cuts coincide); each rectangle takes a
    random colour, an integer 0–255 per channel; then a median filter over a disk (official: radius 5 at 224 px;
    default here: 5 · min(H, W) / 224 rounded, at least 1) softens the edges. Values / 255.
    """
    _, h, w = shape
    g = generator
    if median_radius is None:
        median_radius = max(1, round(5 * min(h, w) / 224))
    zero = torch.zeros((n, 1), dtype=torch.long)
    row_cuts = torch.cat([zero, torch.randint(0, h + 1, (n, cuts), generator=g, device=g.device)], 1).sort(1).values
    col_cuts = torch.cat([zero, torch.randint(0, w + 1, (n, cuts), generator=g, device=g.device)], 1).sort(1).values
    pieces = cuts + 1
    colours = torch.randint(0, 256, (n, 3, pieces * pieces), generator=g, device=g.device).float()
    # piece of each row / column: the last cut at or before it
    row_piece = torch.searchsorted(row_cuts, torch.arange(h).expand(n, h).contiguous(), right=True) - 1
    col_piece = torch.searchsorted(col_cuts, torch.arange(w).expand(n, w).contiguous(), right=True) - 1
    piece = (row_piece[:, :, None] * pieces + col_piece[:, None, :]).view(n, 1, h * w).expand(n, 3, h * w)
    images = colours.gather(2, piece).view(n, 3, h, w)
    images = median_filter_disk(images, median_radius)
    return (images / 255).to(device)


# ---------------------------------------------------------------------------------------------- TRM-UAP's curriculum
TRM_GAUSS_BATCH_DOUBLINGS = (1600, 2400, 3200)  # strategy.py, curriculum_strategy_gauss ("vgg alexnet")
TRM_JIGSAW_BATCH_DOUBLINGS = (1600, 3200)  # strategy.py, curriculum_strategy_jigsaw
TRM_GAUSS_STD_START, TRM_GAUSS_STD_MAX = 10, 127  # trmuap.py sets args.std = 10; capped at 127


def trm_gauss_curriculum(iteration: int, prior_batch: int = 1, t0: int = 400, gamma: int = 10) -> tuple[int, int]:
    """(prior batch, std on the 0–255 scale) at ``iteration`` (1-based, as the official ``iter_num``): the batch
    doubles at iterations 1600, 2400 and 3200; the std starts at 10 and grows by ``gamma`` every ``t0`` iterations,
    capped at 127."""
    batch = prior_batch * 2 ** sum(iteration >= k for k in TRM_GAUSS_BATCH_DOUBLINGS)
    std = min(TRM_GAUSS_STD_MAX, TRM_GAUSS_STD_START + gamma * (iteration // t0))
    return batch, std


def trm_jigsaw_curriculum(iteration: int, prior_batch: int = 1, t0: int = 600, gamma: int = 1,
                          end_iteration: int = 4200, start_cuts: int = 1) -> tuple[int, int]:
    """(prior batch, cuts per axis) at ``iteration`` (1-based): the batch doubles at 1600 and 3200; the number of
    cuts (official ``fre``, starting at 1) grows by ``gamma`` at every multiple of ``t0`` below ``end_iteration``."""
    batch = prior_batch * 2 ** sum(iteration >= k for k in TRM_JIGSAW_BATCH_DOUBLINGS)
    steps = min(iteration // t0, math.ceil(end_iteration / t0) - 1)
    return batch, start_cuts + gamma * steps
