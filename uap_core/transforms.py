"""Differentiable transformations of a perturbed image batch, for robust UAPs by expectation over transformation.

Every function takes ``x`` (B, 3, H, W) float in [0, 1] and per-image strengths (tensors of shape (B,), or (B, 2)
for a shift) and returns (B, 3, H, W) in [0, 1], differentiable in ``x``. :class:`Robustness` draws one random
transformation per image from a run's seeded generator and applies it: a method that fits δ through
``Robustness.apply(clamp(x + δ, 0, 1))`` ascends E_t[loss(f(t(x + δ)))] (Athalye et al., "Synthesizing Robust
Adversarial Examples", ICML 2018: expectation over transformation, EOT), one random t per image and step.

The transformations and how each follows its definition (``tests/test_robust.py`` checks each):

- :func:`affine`: rotation by an angle (degrees, counter-clockwise as ``torchvision.transforms.functional.rotate``),
  scaling about the centre (factor > 1 enlarges) and translation (fractions of the side), one bilinear resampling
  through ``affine_grid`` / ``grid_sample``; outside the image is black (0), as torchvision's ``fill=0``.
- :func:`brightness`: clamp(x · f, 0, 1), exactly ``torchvision``'s ``adjust_brightness``.
- :func:`contrast`: clamp(f · x + (1 − f) · mean(grey(x)), 0, 1), exactly ``adjust_contrast`` (grey = 0.2989 R +
  0.587 G + 0.114 B, the mean over the whole image).
- :func:`gaussian_blur`: a separable Gaussian of standard deviation σ pixels (kernel 2·⌈3·σmax⌉ + 1 taps, reflect
  padding, as ``torchvision``'s ``gaussian_blur``); σ = 0 is the identity.
- :func:`jpeg`: JPEG re-encoding at a quality 1…100, differentiable: full-range YCbCr (JFIF), 4:2:0 chroma
  subsampling (2×2 mean; decoded by bilinear upsampling, libjpeg's "fancy upsampling"), the 8×8 DCT of every block,
  division by the standard luminance / chrominance tables (ITU-T T.81 Annex K) scaled by quality as libjpeg does
  (scale 5000/q below 50, 200 − 2q from 50; entries floor((T·scale + 50)/100) in [1, 255]), rounding, and back.

  Rounding is Shin & Song's cubic approximation, round(u) + (u − round(u))³ ("JPEG-resistant adversarial images",
  NeurIPS 2017 workshop on machine learning and computer security), not the straight-through estimator. Why: the
  straight-through gradient of round(u / q) · q is 1, so the gradient of JPEG would be that of no JPEG at all (the
  quantisation tables cancel): δ would be told nothing about which of its frequencies the encoder throws away. The
  cubic's gradient 3(u − round(u))² is 0 at a coefficient that sits on a quantisation level and grows towards the
  rounding threshold, so the step pushes δ's energy where it survives. Its forward value differs from exact
  rounding by at most 0.125 of a quantisation step per coefficient.

  Measured against real JPEG (libjpeg through Pillow, the same bytes as ``torchvision.io.encode_jpeg``), mean
  absolute pixel difference on 16 ImageNet photos at 224²: 0.0043 at quality 75, 50 and 30, where JPEG itself
  moves the pixels by 0.017 / 0.022 / 0.025 (the real codec's integer DCT, its rounding of halves away from zero
  and of every decoded pixel to 1/255 make the rest). On the CIFAR-10 test images of ``../shared`` (which look already
  JPEG-compressed near quality 75: re-encoding at 75 moves them by only 0.0007) the difference is 0.002 – 0.005,
  except near quality 50 (0.014), where the re-quantised coefficients sit on rounding ties that the float DCT and
  libjpeg's integer DCT break differently.

:class:`Robustness` is what a run is asked for (``RunConfig.robust`` and its strengths): which transformation —
"jpeg", "rotation", "scale", "translation", "color" (brightness and contrast), "blur" — or "screen", the
screen-to-camera bundle (Wang et al., "Adversarial examples in the physical world" style: a photo of a screen is
resampled, shifted, rotated a little, changes brightness and contrast, is blurred by the lens and saved as JPEG):
all of them in that order, each at a random strength within its setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

KINDS = ("off", "jpeg", "rotation", "scale", "translation", "color", "blur", "screen")
# what each kind applies, in the order the bundle applies them
STAGES = {"jpeg": ("jpeg",), "rotation": ("affine",), "scale": ("affine",), "translation": ("affine",),
          "color": ("color",), "blur": ("blur",), "screen": ("affine", "color", "blur", "jpeg")}
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), row by row
LUMINANCE_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
CHROMINANCE_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32))


# ---------------------------------------------------------------------------------------------- geometry
def affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle`` degrees (B,) counter-clockwise, scale by ``scale`` (B,) about the centre (> 1 enlarges)
    and move by ``shift`` (B, 2) (x right, y down) in fractions of the width / height; bilinear, black outside.
    The identity (0, 1, 0) returns x up to the resampling's float rounding (align_corners=False: pixel centres)."""
    b, _, h, w = x.shape
    theta = angle.to(x.device, torch.float32) * (math.pi / 180)
    s = scale.to(x.device, torch.float32)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # in pixel units about the centre (y down): output u shows input M (u − T) / s, M the inverse rotation
    inverse = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) / s[:, None, None]
    half = torch.tensor([w / 2, h / 2], device=x.device)
    linear = inverse * half[None, None, :] / half[None, :, None]  # D⁻¹ A D in normalised coordinates
    moved = shift.to(x.device, torch.float32) * 2  # fractions of the side → normalised units (the side is 2)
    offset = -(linear @ moved[:, :, None])
    matrix = torch.cat([linear, offset], 2)
    grid = F.affine_grid(matrix.to(x.dtype), [b, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------------- colour
def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(x · factor, 0, 1), factor (B,): ``torchvision.transforms.functional.adjust_brightness``."""
    return (x * factor.to(x)[:, None, None, None]).clamp(0, 1)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """clamp(f · x + (1 − f) · mean grey(x), 0, 1), factor (B,): ``adjust_contrast``."""
    weights = torch.tensor(GREY, dtype=x.dtype, device=x.device)[None, :, None, None]
    mean = (x * weights).sum(1, keepdim=True).mean(dim=(1, 2, 3), keepdim=True)
    f = factor.to(x)[:, None, None, None]
    return (f * x + (1 - f) * mean).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- blur
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of σ pixels per image (B,), reflect padding; ``max_sigma`` sets the kernel's
    2·⌈3·max_sigma⌉ + 1 taps (default: the largest σ). σ = 0 leaves the image as it is."""
    sigma = sigma.to(x.device, torch.float32)
    largest = float(sigma.max()) if max_sigma is None else float(max_sigma)
    radius = max(1, math.ceil(3 * largest))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    safe = sigma.clamp_min(1e-6)[:, None]
    kernel = torch.exp(-0.5 * (taps[None, :] / safe) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, K); σ ≈ 0: a single 1 at the centre
    b, c, h, w = x.shape
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect").reshape(1, b * c, h + 2 * radius,
                                                                               w + 2 * radius)
    k = kernel.to(x.dtype).repeat_interleave(c, 0)  # (B·C, K)
    rows = F.conv2d(padded, k[:, None, None, :], groups=b * c)
    out = F.conv2d(rows, k[:, None, :, None], groups=b * c)
    return out.reshape(b, c, h, w)


# ---------------------------------------------------------------------------------------------- JPEG
def dct_matrix(size: int = 8) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (size, size): coefficients = D · block · Dᵀ (JPEG's 8×8 DCT)."""
    n = torch.arange(size, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / (2 * size)) * math.sqrt(2 / size)
    d[0] /= math.sqrt(2)
    return d.float()


def quality_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(luminance, chrominance) quantisation tables (B, 8, 8) for the qualities (B,) in 1…100, libjpeg's scaling."""
    q = quality.to(torch.float32).clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)[:, None, None]

    def scaled(table: tuple[int, ...]) -> torch.Tensor:
        base = torch.tensor(table, dtype=torch.float32).reshape(1, 8, 8)
        return torch.floor((base * scale + 50) / 100).clamp(1, 255)

    return scaled(LUMINANCE_TABLE), scaled(CHROMINANCE_TABLE)


def cubic_round(u: torch.Tensor) -> torch.Tensor:
    """Shin & Song's differentiable rounding: round(u) + (u − round(u))³ (within 0.125 of round(u))."""
    r = torch.round(u)
    return r + (u - r) ** 3


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) with H, W multiples of 8 → (B, H/8, W/8, 8, 8)."""
    b, h, w = plane.shape
    return plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    b, bh, bw, _, _ = blocks.shape
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, bh * 8, bw * 8)


def _quantised(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """One plane (B, H, W) in 0…255 through DCT, quantisation by ``table`` (B, 8, 8), rounding and back."""
    blocks = _blocks(plane - 128)
    coefficients = d @ blocks @ d.T
    t = table.to(plane)[:, None, None]
    restored = cubic_round(coefficients / t) * t
    return _unblocks(d.T @ restored @ d) + 128


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG at ``quality`` (B,) in 1…100: YCbCr, 4:2:0, 8×8 DCT, quantisation, cubic rounding, back
    to RGB in [0, 1] (see the module docstring). Sides that are not multiples of 16 are padded by repeating the
    edge (as the encoder does) and cropped after."""
    b, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    rgb = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255 if ph or pw else x * 255
    r, g, bl = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128
    luminance, chrominance = quality_tables(quality)
    d = dct_matrix().to(x.device, x.dtype)
    y = _quantised(y, luminance, d)
    size = y.shape[-2:]
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # 4:2:0
    cb, cr = (_quantised(chroma[:, i], chrominance, d) for i in range(2))
    chroma = F.interpolate(torch.stack([cb, cr], 1), size=size, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1) / 255
    return out[:, :, :h, :w].clamp(0, 1)


# ---------------------------------------------------------------------------------------------- the random views
@dataclass(frozen=True)
class Robustness:
    """A robust run's random transformations. kind: one of :data:`KINDS` but "off"; the strengths bound the
    uniform draws, one per image and step: quality uniform in [jpeg_quality, 95] (whole numbers), angle in
    ±rotation degrees, scale in [1 − scale, 1 + scale], shift in ±translation of the side (each axis), brightness
    factor in [1 − brightness, 1 + brightness], contrast factor likewise, blur σ in [0, blur] pixels. A kind
    applies its own stage (:data:`STAGES`) — "rotation" rotates only, "scale" scales only — and "screen" all."""

    kind: str
    jpeg_quality: int = 50
    rotation: float = 10.0
    scale: float = 0.1
    translation: float = 0.05
    brightness: float = 0.25
    contrast: float = 0.25
    blur: float = 1.0

    @classmethod
    def from_config(cls, config: Any) -> "Robustness | None":
        """From a RunConfig's ``robust`` and ``robust_*`` fields; None when ``robust`` is "off"."""
        if config.robust == "off":
            return None
        return cls(config.robust, int(config.robust_jpeg_quality), float(config.robust_rotation),
                   float(config.robust_scale), float(config.robust_translation), float(config.robust_brightness),
                   float(config.robust_contrast), float(config.robust_blur))

    def as_dict(self) -> dict[str, Any]:
        """The settings that apply to this kind (what an artifact's metadata records)."""
        used = {"kind": self.kind}
        stages = STAGES[self.kind]
        if "jpeg" in stages:
            used["jpeg_quality"] = self.jpeg_quality
        if self.kind in ("rotation", "screen"):
            used["rotation"] = self.rotation
        if self.kind in ("scale", "screen"):
            used["scale"] = self.scale
        if self.kind in ("translation", "screen"):
            used["translation"] = self.translation
        if "color" in stages:
            used.update(brightness=self.brightness, contrast=self.contrast)
        if "blur" in stages:
            used["blur"] = self.blur
        return used

    def apply(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1] → one random transformation of each image, drawn from ``generator`` (the
        run's seeded CPU generator, so the same seed draws the same views; the draws move to x's device)."""
        n = x.shape[0]

        def uniform(low: float, high: float, size: tuple[int, ...] = ()) -> torch.Tensor:
            u = torch.rand((n, *size), generator=generator, device=generator.device, dtype=torch.float32)
            return (low + (high - low) * u).to(x.device)

        stages = STAGES[self.kind]
        for stage in stages:
            if stage == "affine":
                screen = self.kind == "screen"
                angle = (uniform(-self.rotation, self.rotation) if self.kind in ("rotation", "screen")
                         else torch.zeros(n, device=x.device))
                scale = (uniform(1 - self.scale, 1 + self.scale) if self.kind in ("scale", "screen")
                         else torch.ones(n, device=x.device))
                shift = (uniform(-self.translation, self.translation, (2,)) if self.kind == "translation" or screen
                         else torch.zeros(n, 2, device=x.device))
                x = affine(x, angle, scale, shift)
            elif stage == "color":
                x = contrast(brightness(x, uniform(1 - self.brightness, 1 + self.brightness)),
                             uniform(1 - self.contrast, 1 + self.contrast))
            elif stage == "blur":
                x = gaussian_blur(x, uniform(0.0, self.blur), max_sigma=self.blur)
            elif stage == "jpeg":
                quality = torch.floor(uniform(self.jpeg_quality, 96.0)).clamp(max=95)
                x = jpeg(x, quality)
        return x


def robust_fields(config: Any) -> dict[str, Any]:
    """The robust settings of a RunConfig for an artifact's metadata: {"kind": "off"} or :meth:`Robustness.as_dict`."""
    robust = Robustness.from_config(config)
    return {"kind": "off"} if robust is None else robust.as_dict()


__all__ = ["KINDS", "Robustness", "affine", "brightness", "contrast", "cubic_round", "dct_matrix", "gaussian_blur",
           "jpeg", "quality_tables", "robust_fields"]

