"""The physical check: a perturbed image made to be printed or shown on a screen, then a photo of it classified
against the clean image and the digital perturbed image.

The photo is a new image. δ is not added to it again: the screen or the printer, the camera, the light and the
angle all change the perturbed pixels, so the photo's label is the physical test of δ, not the digital one
(:func:`uap_core.report.photo_report` is the digital one). Forward-only; no Streamlit.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
from PIL import Image

from .artifacts import resample_delta
from .evaluation import predict_logits
from .models import Classifier
from .report import TopLabels, _top_labels, perturbed_pixels

CM_PER_INCH = 2.54
MAX_PRINT_SIDE = 8000  # pixels: a print PNG never gets larger than this on its longer side


def upscale_nearest(picture: torch.Tensor, factor: int) -> torch.Tensor:
    """Every pixel of a (3, H, W) picture repeated ``factor``×``factor`` times: (3, H·factor, W·factor), same
    dtype. Nearest neighbour, so each pixel of δ stays one crisp square (no interpolation smears it)."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    return picture.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


@dataclass(frozen=True)
class PrintSize:
    """How a (height, width)-pixel image is printed: each pixel becomes ``factor``×``factor`` pixels of the PNG,
    printed at ``dpi`` pixels per inch."""

    height: int
    width: int
    factor: int
    dpi: int

    @property
    def pixels(self) -> tuple[int, int]:
        """(width, height) of the print PNG in pixels."""
        return self.width * self.factor, self.height * self.factor

    @property
    def inches(self) -> tuple[float, float]:
        """(width, height) on paper in inches."""
        width, height = self.pixels
        return width / self.dpi, height / self.dpi

    @property
    def cm(self) -> tuple[float, float]:
        """(width, height) on paper in centimetres."""
        width, height = self.inches
        return width * CM_PER_INCH, height * CM_PER_INCH

    def describe(self) -> str:
        (px_w, px_h), (cm_w, cm_h), (in_w, in_h) = self.pixels, self.cm, self.inches
        return (f"{px_w} × {px_h} px ({self.factor} × {self.factor} per image pixel): {cm_w:.1f} × {cm_h:.1f} cm "
                f"({in_w:.2f} × {in_h:.2f} in) at {self.dpi} DPI")


def print_size(height: int, width: int, width_cm: float, dpi: int = 300) -> PrintSize:
    """The whole-number upscale factor that prints a ``width``-pixel-wide image closest to ``width_cm``
    centimetres wide at ``dpi`` (at least 1; the longer side at most :data:`MAX_PRINT_SIDE` pixels)."""
    if height < 1 or width < 1 or width_cm <= 0 or dpi < 1:
        raise ValueError(f"bad print size: {height}×{width} px, {width_cm} cm, {dpi} DPI")
    wanted = width_cm / CM_PER_INCH * dpi / width
    factor = max(1, min(round(wanted), MAX_PRINT_SIDE // max(height, width)))
    return PrintSize(height, width, factor, dpi)


def print_png(picture: torch.Tensor, size: PrintSize) -> bytes:
    """The (3, H, W) uint8 picture upscaled by ``size.factor`` (nearest neighbour) as PNG bytes whose pHYs chunk
    says ``size.dpi`` dots per inch, so a printer prints it at ``size.cm``."""
    if picture.dim() != 3 or picture.dtype != torch.uint8 or tuple(picture.shape[1:]) != (size.height, size.width):
        raise ValueError(f"expected a (3, {size.height}, {size.width}) uint8 picture, got "
                         f"{tuple(picture.shape)} {picture.dtype}")
    big = upscale_nearest(picture.cpu(), size.factor)
    buffer = io.BytesIO()
    Image.fromarray(big.permute(1, 2, 0).contiguous().numpy(), "RGB").save(buffer, format="PNG",
                                                                            dpi=(size.dpi, size.dpi))
    return buffer.getvalue()


def screen_factor(height: int, width: int, side: int = 1024) -> int:
    """The whole-number factor that makes a picture's longer side at least ``side`` pixels (for showing it
    large on a screen without the browser smoothing δ's pixels away)."""
    return max(1, math.ceil(side / max(height, width)))


@dataclass
class PhysicalReport:
    """A photo of the perturbed image beside the clean image and the digital perturbed image.

    clean / perturbed / photo: (3, H, W) uint8 at the model's input size — the clean picture, clamp(clean +
    scale·δ) rounded to 1/255 (what is shown and printed), and the photo as the model sees it (decoded, centre
    crop). The photo is classified as it is: δ is not added to it.
    """

    clean: torch.Tensor
    perturbed: torch.Tensor
    photo: torch.Tensor
    clean_top: TopLabels
    perturbed_top: TopLabels
    photo_top: TopLabels

    @property
    def digital_fooled(self) -> bool:
        """True when the digital perturbed image's top-1 label differs from the clean image's."""
        return self.perturbed_top.labels[0] != self.clean_top.labels[0]

    @property
    def photo_fooled(self) -> bool:
        """True when the photo's top-1 label differs from the clean image's: δ survived the trip."""
        return self.photo_top.labels[0] != self.clean_top.labels[0]

    @property
    def photo_as_digital(self) -> bool:
        """True when the photo's top-1 label is the digital perturbed image's."""
        return self.photo_top.labels[0] == self.perturbed_top.labels[0]


def physical_report(model: Classifier, picture: torch.Tensor, delta: torch.Tensor, photo: torch.Tensor,
                    scale: float = 1.0, k: int = 5) -> PhysicalReport:
    """The top-``k`` labels of the clean picture, of the picture with ``scale``·δ added, and of a photo of the
    latter (classified as it is), the three in one batch.

    picture / photo: (3, H, W) uint8 at the model's input size (:func:`uap_core.images.decode_image`).
    delta: (3, h, w) pixel units; resampled to H×W when it differs.
    """
    if picture.dim() != 3 or picture.dtype != torch.uint8:
        raise ValueError(f"expected a (3, H, W) uint8 picture, got {tuple(picture.shape)} {picture.dtype}")
    if photo.dtype != torch.uint8 or photo.shape != picture.shape:
        raise ValueError(f"expected a {tuple(picture.shape)} uint8 photo, got {tuple(photo.shape)} {photo.dtype}")
    size = tuple(picture.shape[1:])
    clean = picture.cpu()
    perturbed = perturbed_pixels(clean[None], resample_delta(delta.detach().float().cpu(), size) * float(scale))[0]
    logits = predict_logits(model, torch.stack([clean, perturbed, photo.cpu()]), None, "fp32").cpu()  # one batch
    names = model.spec.class_names
    return PhysicalReport(clean, perturbed, photo.cpu(), *(_top_labels(row, names, k) for row in logits))
