"""Readers for the field's published perturbations (``.mat``, ``.npy``, ``.pth``) and their conversion to 3×H×W
pixel units (``.pth`` files are read without unpickling by :mod:`uap_core.safe_pickle`).

:func:`uap_core.artifacts.load_uap` (and ``load_uap_bytes``, the Library's import, ``python -m uap_core evaluate
--uap``) hand every non-safetensors file to this module, so these load as they were published::

    python -m uap_core evaluate --uap precomputed/VGG-16.mat --model vgg16 --images samples
    python -m uap_core evaluate --uap perturbations/vgg16_with_data.npy --model vgg16      # GD-UAP (BGR, 0-255)
    python -m uap_core evaluate --uap perturbations/uap_vgg16.npy --model vgg16            # TRM-UAP
    python -m uap_core evaluate --uap uaps/imagenet/sgd-resnet50-eps10.pth --model resnet50  # SGD-UAP

    >>> from uap_core.artifacts import load_uap
    >>> art = load_uap("VGG-16.mat", expected_size=(224, 224))           # doctest: +SKIP
    >>> art.metadata["published"]["converted"]                           # doctest: +SKIP
    ['W×H×C → 3×H×W', '÷255 (0-255 scale → pixel units)']
    >>> load_uap("mine.npy", layout="HWC", scale=255, channels="bgr")   # doctest: +SKIP  (overrides)

What the sources publish (checked against their official code), and how each is recognised:

* UAP, Moosavi-Dezfooli et al. (LTS4/universal ``precomputed/*.mat``): variable ``r``, MATLAB single,
  W×H×C, 0-255 scale, RGB — any ``.mat`` file (MATLAB header or suffix).
* UAP's TensorFlow demo (LTS4/universal ``python/data/universal.npy``): 1×H×W×C, 0-255, RGB — the rules below.
* GD-UAP (val-iisc/GD-UAP ``<net>_{no_data,with_data,with_range}.npy``): 1×H×W×C, 0-255 (clipped to ±10),
  **BGR** — the file-name pattern ``*_no_data.npy`` / ``*_with_data.npy`` / ``*_with_range.npy``.
* TRM-UAP (RandolphCarter0/TRMUAP ``perturbations/uap_<net>.npy``): 1×3×H×W in [0, 1] pixel units, RGB — the
  rules below (``uap_*.npy`` is recorded as TRM-UAP).
* SGD-UAP (kenny-co/sgd-uap-torch ``uaps/**/*.pth``, ``torch.save(delta)``): 3×H×W in pixel units, RGB — the
  rules below (``sgd-*.pth`` is recorded as SGD-UAP).

Where that comes from:

* LTS4/universal's ``precomputed/README.md`` states "Perturbations have a format ``WxHxC``, where the channels are
  arranged in RGB format": MATLAB's Caffe interface is width-first and BGR (``matlab/demo_caffe.m`` permutes
  ``[2,1,3]`` and flips the channels before showing ``v``); the published files were turned to RGB but kept
  width-first, so they are read as W×H×C (transposed to 3×H×W) and not flipped. This follows the README (the
  binary files themselves were not inspected); pass ``layout="HWC"`` to read them rows-first, or
  ``channels="bgr"`` to flip them, if a file says otherwise.
* GD-UAP's images are BGR (``misc/utils.py``: ``tf.reverse(img, [-1])``; ``vgg_preprocess`` swaps channels 0
  and 2) in the 0-255 scale with the mean subtracted, and the perturbation (clipped to ±10) is added to them:
  so its channels are flipped to RGB and it is divided by 255.
* TRM-UAP saves the Adam-fitted δ, ``(1, 3, 224, 224)`` in [0, 1] pixel units, clamped to ±ε when used;
  SGD-UAP saves ``delta.data`` (3×H×W, pixel units, within ±ε) with ``torch.save``.

The rules, in order (each can be overridden by the caller's ``layout`` / ``scale`` / ``channels``):

1. A leading batch axis of 1 is dropped (``1×…`` → ``…``); a batch of several is refused.
2. Layout: a ``.mat`` file is W×H×C; otherwise the axis of length 3 is the channel axis — first → C×H×W,
   last → H×W×C (both: C×H×W).
3. Scale: a ``.mat`` or a GD-UAP file is 0-255; otherwise 0-255 when the largest ``|entry|`` exceeds 1 (an
   entry beyond ±1 in pixel units would push every pixel out of [0, 1], so such a file cannot be in pixel units),
   else pixel units. 0-255 values are divided by 255.
4. Channels: BGR for GD-UAP files, RGB otherwise; BGR is flipped to RGB.

Whenever anything was converted (and for every ``.mat``) the artifact's metadata records it::

    {"published": {"format": "npy", "source": "GD-UAP", "source_shape": [1, 224, 224, 3],
                   "source_layout": "NHWC", "source_scale": "0-255", "source_channels": "BGR",
                   "converted": ["dropped the batch axis", "H×W×C → 3×H×W", "÷255 (…)", "BGR → RGB"]}}

Safety: ``.mat`` files are read with :func:`scipy.io.loadmat`, which parses MATLAB's binary format and never
unpickles; MATLAB objects, cells, structs and function handles are refused (only a numeric array is accepted).
``.npy`` files are read with ``np.load(allow_pickle=False)``. ``.pt``/``.pth`` files (torch.save, both the zip
container and the legacy pre-1.6 stream) are read by :func:`uap_core.safe_pickle.read_torch_file`, which walks the
pickle's opcodes and interprets only inert data (tuples, lists, dicts, numbers, strings) plus the tensor pattern
``torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, …)``; nothing is imported and nothing
is called, and any other global (``os.system``, a custom class, …) is refused by name.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

from .errors import ArtifactError, ParameterError

LAYOUTS = ("auto", "CHW", "HWC", "WHC")
CHANNELS = ("auto", "rgb", "bgr")
SCALES = ("auto", "unit", "255")

# ----------------------------------------------------------------------------------------------------------
# MATLAB .mat
# ----------------------------------------------------------------------------------------------------------

MAT_KEY = "r"  # the variable of LTS4/universal's precomputed perturbations


def read_mat(data: bytes, source: str) -> np.ndarray:
    """The perturbation array of a ``.mat`` file: variable ``r`` (LTS4/universal's name), else the only numeric
    variable. MATLAB v4/v5/v7 files are read with :func:`scipy.io.loadmat` (no unpickling); v7.3 (HDF5) files,
    and objects, cells, structs, strings and function handles are refused."""
    import scipy.io

    if data[:19].startswith(b"MATLAB 7.3"):
        raise ArtifactError(f"{source} is a MATLAB v7.3 (HDF5) file, which is not read; save it with "
                            "save(..., '-v7') in MATLAB")
    try:
        variables = scipy.io.loadmat(io.BytesIO(data), mat_dtype=False, squeeze_me=False, struct_as_record=True,
                                     verify_compressed_data_integrity=True)
    except NotImplementedError as exc:  # v7.3 without the header text
        raise ArtifactError(f"{source}: {exc}") from None
    except Exception as exc:  # MatReadError, ValueError, zlib errors, ...
        raise ArtifactError(f"{source} is not a readable MATLAB .mat file: {exc}") from None
    names = sorted(k for k in variables if not k.startswith("__"))
    if MAT_KEY in variables:
        chosen = MAT_KEY
    elif len(names) == 1:
        chosen = names[0]
    else:
        raise ArtifactError(f"{source}: no variable named {MAT_KEY!r} (the UAP paper's name) and not exactly one "
                            f"variable to choose (variables: {', '.join(names) or 'none'})")
    value = variables[chosen]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.dtype.fields is not None:
        kind = type(value).__name__ if not isinstance(value, np.ndarray) else (
            "a cell array or MATLAB object" if value.dtype.kind == "O" else
            "a struct" if value.dtype.fields is not None else f"an array of {value.dtype}")
        raise ArtifactError(f"{source}: variable {chosen!r} is {kind}, not a numeric perturbation array; only "
                            "numeric arrays are read from .mat files")
    return value


# ----------------------------------------------------------------------------------------------------------
# Layout, scale and channel conversion
# ----------------------------------------------------------------------------------------------------------

_GD_UAP_NAME = re.compile(r"_(no_data|with_data|with_range)\.npy$", re.IGNORECASE)
_TRM_UAP_NAME = re.compile(r"^uap_[^/\\]+\.npy$", re.IGNORECASE)
_SGD_UAP_NAME = re.compile(r"^sgd-.*\.pth?$", re.IGNORECASE)


def recognise(name: str, container: str) -> str | None:
    """The publisher of a file, from its container and name: "UAP (LTS4/universal)", "GD-UAP", "TRM-UAP",
    "SGD-UAP" or None. Only GD-UAP changes the conversion (BGR, 0-255); the others are recorded."""
    base = PurePath(name).name
    if container == "mat":
        return "UAP (LTS4/universal)"
    if container == "npy" and _GD_UAP_NAME.search(base):
        return "GD-UAP"
    if container == "npy" and _TRM_UAP_NAME.match(base):
        return "TRM-UAP"
    if container == "npy" and base.lower() == "universal.npy":
        return "UAP (LTS4/universal, TensorFlow demo)"
    if container == "torch" and _SGD_UAP_NAME.match(base):
        return "SGD-UAP"
    return None


@dataclass(frozen=True)
class Conversion:
    """How a file's array is read: layout "auto" | "CHW" | "HWC" | "WHC"; scale "auto" | "unit" | "255";
    channels "auto" | "rgb" | "bgr" (see the module docstring for what "auto" decides)."""

    layout: str = "auto"
    scale: str = "auto"
    channels: str = "auto"

    @classmethod
    def of(cls, layout: str | None = "auto", scale: str | float | None = "auto",
           channels: str | None = "auto") -> "Conversion":
        """Checked options; ParameterError names the allowed values. scale also takes 1 and 255."""
        layout = "auto" if layout is None else str(layout)
        layout = layout if layout == "auto" else layout.upper()
        if layout not in LAYOUTS:
            raise ParameterError(f"layout must be one of {', '.join(LAYOUTS)} (a leading batch axis of 1 is "
                                 f"dropped first); got {layout!r}")
        if scale is None or scale == "auto":
            scale_text = "auto"
        elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale in (1, 255):
            scale_text = "unit" if scale == 1 else "255"
        elif str(scale).lower() in ("unit", "1", "pixel", "255", "0-255"):
            scale_text = "255" if str(scale) in ("255", "0-255") else "unit"
        else:
            raise ParameterError(f"scale must be auto, unit (pixel units, [0, 1] images) or 255 (0-255 images); "
                                 f"got {scale!r}")
        channels = "auto" if channels is None else str(channels).lower()
        if channels not in CHANNELS:
            raise ParameterError(f"channels must be one of {', '.join(CHANNELS)}; got {channels!r}")
        return cls(layout, scale_text, channels)


def convert(value: np.ndarray | torch.Tensor, name: str, container: str,
            options: Conversion = Conversion()) -> tuple[Any, dict | None]:
    """A published array → a (3, H, W) perturbation in pixel units (RGB), and the ``published`` record.

    Args:
        value: the array read from the file (any layout, see the module docstring).
        name: the file name (recognises GD-UAP's files); container: "mat" | "npy" | "torch".
        options: the caller's overrides.

    Returns:
        ``(tensor, record)``; record is None when nothing was converted (a native 3×H×W file in pixel units, RGB).
        Arrays that cannot be a perturbation (integers, 2-D, a batch of several, ...) come back unchanged, for
        :func:`uap_core.artifacts._validate_delta` to refuse with its message.

    Raises:
        ArtifactError: an explicit ``layout`` that does not fit the array's shape.
    """
    source = recognise(name, container)
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))) \
        if isinstance(value, np.ndarray) else value
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        return value, None
    shape = [int(s) for s in tensor.shape]
    steps: list[str] = []
    batch = tensor.ndim == 4 and shape[0] == 1
    if batch:
        tensor = tensor[0]
        steps.append("dropped the batch axis")
    if tensor.ndim != 3 or 3 not in (tensor.shape[0], tensor.shape[-1]):
        if tensor.ndim != 3 and options.layout != "auto":
            raise ArtifactError(f"{name}: layout {options.layout} needs a 3-D array (or 1×…); got shape "
                                f"{'×'.join(map(str, shape))}")
        return value, None

    layout = options.layout
    if layout == "auto":
        if container == "mat":
            layout = "WHC"
        else:
            layout = "CHW" if tensor.shape[0] == 3 else "HWC"
    axis = 0 if layout == "CHW" else 2
    if tensor.shape[axis] != 3:
        raise ArtifactError(f"{name}: layout {layout} puts the channels on an axis of length "
                            f"{tensor.shape[axis]} (shape {'×'.join(map(str, shape))})")
    if layout == "HWC":
        tensor = tensor.permute(2, 0, 1)
        steps.append("H×W×C → 3×H×W")
    elif layout == "WHC":
        tensor = tensor.permute(2, 1, 0)
        steps.append("W×H×C → 3×H×W")

    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    scale = options.scale
    if scale == "auto":
        scale = "255" if container == "mat" or source == "GD-UAP" or (math.isfinite(peak) and peak > 1) else "unit"
    if scale == "255":
        tensor = tensor.double() / 255.0
        steps.append("÷255 (0-255 scale → pixel units)")

    channels = options.channels
    if channels == "auto":
        channels = "bgr" if source == "GD-UAP" else "rgb"
    if channels == "bgr":
        tensor = tensor.flip(0)
        steps.append("BGR → RGB")

    tensor = tensor.contiguous()
    if not steps and container != "mat":
        return tensor, None
    record = {
        "format": container,
        "source": source,
        "source_shape": shape,
        "source_layout": ("N" if batch else "") + layout,
        "source_scale": "0-255" if scale == "255" else "0-1",
        "source_channels": channels.upper(),
        "converted": steps,
    }
    return tensor, record


__all__ = ["Conversion", "MAT_KEY", "convert", "read_mat", "recognise"]
