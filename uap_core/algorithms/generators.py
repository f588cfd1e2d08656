"""Image-to-image generator networks for the generative UAP methods (GAP).

:class:`ResnetGenerator` is the ResNet generator of the GAP code (``material/models/generators.py`` of
``OmidPoursaeed/Generative_Adversarial_Perturbations``, itself the CycleGAN/pix2pix ResNet generator), rewritten
here with the settings ``GAP_clf.py`` builds it with (``ResnetGenerator(3, 3, ngf, norm_type='batch',
act_type='relu')``: 6 residual blocks, no dropout, reflection padding)::

    ReflectionPad(3) → Conv 7×7 (3 → ngf)        → BN → ReLU
    Conv 3×3 stride 2 (ngf → 2ngf)                → BN → ReLU      # H → ⌈H/2⌉
    Conv 3×3 stride 2 (2ngf → 4ngf)               → BN → ReLU      # → ⌈H/4⌉
    n_blocks × residual block on 4ngf channels: x + BN(Conv3(RPad1(ReLU(BN(Conv3(RPad1(x)))))))
    ConvTranspose 3×3 stride 2 (4ngf → 2ngf)      → BN → ReLU      # ×2
    ConvTranspose 3×3 stride 2 (2ngf → ngf)       → BN → ReLU      # ×2  → 4·⌈H/4⌉
    ReflectionPad(3) → Conv 7×7 (ngf → 3, with bias) → tanh        # values in (−1, 1)

As in the official code the convolutions before a batch norm have no bias (the norm's shift replaces it); only the
last convolution has one. Weights are initialised as the official ``weights_init``: every (transposed) convolution
N(0, 0.02), biases 0, batch-norm scales N(1, 0.02) and shifts 0 — drawn from a given seeded generator.

Sizes: the two stride-2 convolutions take H to ⌈⌈H/2⌉/2⌉ and the transposed ones double it back, so the output is
4·⌈H/4⌉ × 4·⌈W/4⌉: the input size when H and W are multiples of 4 (all the project's classifiers: 32 for CIFAR,
224, 240, 260), otherwise up to 3 rows/columns larger. The output is then **cropped** to H × W (its first H rows
and W columns; the official code crops Inception's 300 → 299 by dropping the top row and the right column). The
smallest size that works is 5 (the bottleneck must be at least 2 × 2 for its reflection padding).

Batch norm: ``track_running_stats=False`` — the norms always use the statistics of the current input, in train
and eval mode alike. GAP feeds the generator one fixed noise image, so these are the statistics of that image's
feature maps and the generator is a pure function of its weights (see ``gap.py`` for why, and how this differs
from the official code's eval-mode running averages).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class ResidualBlock(nn.Module):
    """x + BN(Conv3×3(RPad1(ReLU(BN(Conv3×3(RPad1(x))))))) on ``channels`` channels; the shape is kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), _norm(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """GAP's ResNet generator: (N, 3, H, W) → (N, 3, H, W) with values in (−1, 1) (tanh).

    ngf: filters of the first convolution (official 64); the bottleneck has 4·ngf channels.
    n_blocks: residual blocks at the bottleneck (official 6).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 6, channels: int = 3) -> None:
        super().__init__()
        self.ngf, self.n_blocks = ngf, n_blocks
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7, bias=False), _norm(ngf),
                                   nn.ReLU()]
        width = ngf
        for _ in range(2):  # downsampling: H → ⌈H/2⌉ each
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), _norm(2 * width), nn.ReLU()]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(n_blocks)]
        for _ in range(2):  # upsampling: exactly ×2 each
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=False),
                       _norm(width // 2), nn.ReLU()]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, C, H, W) with H, W ≥ 5 → (N, C, H, W) in (−1, 1); sizes that are not multiples of 4 are
        generated at 4·⌈H/4⌉ × 4·⌈W/4⌉ and cropped to the first H rows and W columns."""
        height, width = z.shape[-2:]
        if min(height, width) < 5:
            raise ValueError(f"the generator needs inputs of at least 5×5 pixels, got {height}×{width}")
        return self.layers(z)[..., :height, :width]


@torch.no_grad()
def init_weights(network: nn.Module, generator: torch.Generator) -> None:
    """The official ``weights_init``, from a seeded generator: (transposed) convolution weights ~ N(0, 0.02) and
    their biases 0; batch-norm scales ~ N(1, 0.02) and shifts 0. Draws on the generator's device (the CPU for the
    runs' seeded generator), in module order, so the same seed gives the same weights on every device."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            mean = 0.0
        elif isinstance(module, nn.BatchNorm2d):
            mean = 1.0
        else:
            continue
        weight = torch.randn(module.weight.shape, generator=generator, device=generator.device) * 0.02 + mean
        module.weight.copy_(weight)
        if module.bias is not None:
            module.bias.zero_()
