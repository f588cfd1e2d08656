"""Saving and loading universal adversarial perturbations.

A UAP ``delta`` is a float32 tensor of shape (3, H, W) in *pixel space*: it is added to images whose values lie
in [0, 1], so ``eps = 10/255`` means ten grey levels. Its budget is either an L∞ ball (every entry in
[-eps, eps]) or an L2 ball (``||delta||_2 <= eps``).

On disk an artifact is three siblings sharing one stem::

    my_uap.safetensors   tensor "delta" (fp32, 3×H×W) + {"format": "uap-explorer", "format_version": "1"}
    my_uap.json          the metadata: model, algorithm, params, eps, norm, seed, metric history, versions, ...
    my_uap.png           the perturbation made visible (amplified so its largest entry reaches black/white)

Every file is written atomically (temporary file in the same folder, fsync, ``os.replace``), and the three are
committed together: if any write fails, a previous artifact of the same name is left byte-identical.

Loading never unpickles: ``.pt``/``.pth`` are read by :func:`uap_core.safe_pickle.read_torch_file` (the pickle's
opcodes are walked, nothing is imported or called; only tensors are taken), ``.npy`` through
``np.load(allow_pickle=False)``, ``.mat`` through ``scipy.io.loadmat``, and a ``.safetensors`` name must hold
safetensors content. Published perturbations (the UAP paper's ``.mat``, GD-UAP's and TRM-UAP's ``.npy``,
SGD-UAP's ``.pth``) are converted to 3×H×W pixel units on load: see :mod:`uap_core.published`.

    >>> import torch
    >>> path = save_uap(torch.zeros(3, 32, 32), {"model": "cifar_resnet20", "eps": 8 / 255}, "/tmp/demo")
    >>> load_uap(path, expected_size=(32, 32), eps=8 / 255).delta.shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import published
from .atomic import write_files_atomically
from .errors import ArtifactError, ParameterError
from .jsonable import jsonable
from .safe_pickle import read_torch_file

FORMAT_VERSION = 1
FORMAT_NAME = "uap-explorer"
SAFETENSORS_SUFFIX = ".safetensors"
TENSOR_KEY = "delta"
EMBEDDED_METADATA_KEY = "uap_metadata"
NORMS = ("linf", "l2")
BUDGET_TOLERANCE = 1e-4  # relative slack on the eps check (float round-off of the attack's projection)

_MAGIC_ZIP = b"PK\x03\x04"  # torch.save's default (zip) container
_MAGIC_NPY = b"\x93NUMPY"
_MAGIC_PICKLE = b"\x80"  # pickle protocol >= 2 (torch's legacy format, plain pickle.dump)
_MAGIC_MAT = b"MATLAB"  # the text header of MATLAB v5/v7/v7.3 .mat files


@dataclass
class UAPArtifact:
    """A loaded perturbation.

    Attributes:
        delta: (3, H, W) float32 CPU tensor in pixel units (added to images in [0, 1]).
        metadata: JSON-able dict (model, algorithm, params, eps, norm, seed, image source, metric history,
            versions, ...). ``{"metadata_missing": True}`` when the file carried none; ``"resized_from": [H, W]``
            when it was resampled on load.
        path: the file it was loaded from, or ``None`` for bytes (uploads).
    """

    delta: torch.Tensor
    metadata: dict
    path: Path | None


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    return "×".join(str(int(s)) for s in shape)


def _validate_delta(tensor: Any, source: str, *, allow_batch: bool = False) -> torch.Tensor:
    """Check that ``tensor`` is a usable perturbation and return it as a contiguous (3, H, W) float32 CPU tensor.

    Args:
        tensor: candidate perturbation (torch tensor or numpy array).
        source: what it is called in error messages (a file name, "the perturbation").
        allow_batch: also accept (1, 3, H, W) and squeeze the batch dimension.

    Raises:
        ArtifactError: not a tensor, wrong shape, empty, non-floating dtype, NaN or Inf entries.
    """
    if isinstance(tensor, np.ndarray):
        tensor = _numpy_to_tensor(tensor, source)
    if not isinstance(tensor, torch.Tensor):
        raise ArtifactError(f"{source}: expected a tensor, got {type(tensor).__name__}")
    if allow_batch and tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        hint = ""
        if tensor.ndim == 3 and tensor.shape[-1] == 3:
            hint = " (it looks channels-last, H×W×3: transpose it to 3×H×W)"
        elif tensor.ndim == 4:
            hint = " (only a single perturbation, 1×3×H×W, is accepted, not a batch)"
        raise ArtifactError(
            f"{source}: a perturbation must be a 3×H×W tensor (RGB, channels first); "
            f"got shape {_shape_str(tensor.shape) or 'scalar'}{hint}"
        )
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ArtifactError(f"{source}: the perturbation is empty (shape {_shape_str(tensor.shape)})")
    if tensor.is_complex() or not tensor.is_floating_point():
        raise ArtifactError(
            f"{source}: the perturbation has dtype {str(tensor.dtype).removeprefix('torch.')}; expected floating "
            "point values in pixel units (e.g. within ±10/255), not integers"
        )
    out = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(out).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ArtifactError(
            f"{source}: the perturbation contains {n_nan} NaN and {n_inf} infinite values "
            f"(after conversion to float32); it must be finite"
        )
    return out


def _numpy_to_tensor(arr: np.ndarray, source: str) -> torch.Tensor:
    """Numpy array -> torch tensor, refusing dtypes torch cannot represent with a clear message."""
    if arr.dtype.kind in "biu":
        raise ArtifactError(
            f"{source}: the perturbation has dtype {arr.dtype}; expected floating point values in pixel units "
            "(e.g. within ±10/255), not integers"
        )
    if arr.dtype.kind != "f":
        raise ArtifactError(f"{source}: unsupported array dtype {arr.dtype}; expected float16/32/64")
    if arr.dtype.itemsize > 8:  # long double
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr)


def _check_norm(norm: str) -> str:
    if not isinstance(norm, str) or norm.lower() not in NORMS:
        raise ParameterError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    return norm.lower()


def _check_load_params(
    expected_size: tuple[int, int] | None, eps: float | None, norm: str
) -> tuple[tuple[int, int] | None, float | None, str]:
    norm = _check_norm(norm)
    if expected_size is not None:
        try:
            h, w = (int(s) for s in expected_size)
        except (TypeError, ValueError):
            raise ParameterError(f"expected_size must be (height, width); got {expected_size!r}") from None
        if h <= 0 or w <= 0:
            raise ParameterError(f"expected_size must be positive; got {expected_size!r}")
        expected_size = (h, w)
    if eps is not None:
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise ParameterError(f"eps must be a number; got {eps!r}") from None
        if not math.isfinite(eps) or eps <= 0:
            raise ParameterError(f"eps must be a positive finite number (pixel units, e.g. 10/255); got {eps!r}")
    return expected_size, eps, norm


def _measure(delta: torch.Tensor, norm: str) -> float:
    """L∞ (max |entry|) or L2 (Euclidean, over all 3·H·W entries) norm of ``delta``, in pixel units."""
    if norm == "linf":
        return float(delta.abs().max())
    return float(delta.double().norm())


def _check_budget(delta: torch.Tensor, eps: float, norm: str, source: str, resized: bool) -> None:
    measured = _measure(delta, norm)
    if measured <= eps * (1 + BUDGET_TOLERANCE):
        return
    if norm == "linf":
        detail = (
            f"its L∞ norm (largest |entry|) is {measured:.6g} = {measured * 255:.3g}/255 "
            f"but the budget is eps={eps:.6g} = {eps * 255:.3g}/255"
        )
    else:
        detail = f"its L2 norm is {measured:.6g} but the budget is eps={eps:.6g}"
    note = " (measured after resizing, which changes the L2 norm)" if resized and norm == "l2" else ""
    raise ArtifactError(f"{source}: the perturbation exceeds its budget: {detail}{note}")


def resample_delta(delta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """δ (3, H, W) resampled to ``size`` = (h, w): bilinear, antialiased when shrinking (never raises the L∞
    norm). Returned as is when it already has that size."""
    h, w = size
    if tuple(delta.shape[1:]) == (h, w):
        return delta
    shrinking = h < delta.shape[1] or w < delta.shape[2]
    out = F.interpolate(delta[None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)
    return out[0].contiguous()


# ----------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------



def _library_versions() -> dict[str, str | None]:
    from importlib import metadata as importlib_metadata

    try:
        torchvision_version: str | None = importlib_metadata.version("torchvision")
    except importlib_metadata.PackageNotFoundError:
        torchvision_version = None
    return {
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "numpy": np.__version__,
        "safetensors": getattr(safetensors, "__version__", None),
        "python": platform.python_version(),
    }


def _full_metadata(delta: torch.Tensor, metadata: dict) -> dict:
    """The caller's metadata plus format_version, shape, linf, l2, created and library_versions."""
    if not isinstance(metadata, dict):
        raise ArtifactError(f"metadata must be a dict; got {type(metadata).__name__}")
    full = dict(metadata)
    full.update(
        format_version=FORMAT_VERSION,
        shape=list(delta.shape),
        linf=_measure(delta, "linf"),
        l2=_measure(delta, "l2"),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        library_versions=_library_versions(),
    )
    return full


def _metadata_json(full: dict) -> str:
    """Serialise metadata (NaN/Inf in metric histories are written as Python's JSON does: NaN, Infinity)."""
    try:
        return json.dumps(jsonable(full, strict=True), indent=2, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"metadata is not JSON-serialisable: {e}") from e


def _parse_metadata(text: str | bytes, source: str) -> dict:
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"metadata file {source} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ArtifactError(f"metadata file {source} must hold a JSON object, not {type(meta).__name__}")
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{source} was written by a newer UAP Explorer (format version {version}; this one reads up to "
            f"{FORMAT_VERSION}); please upgrade"
        )
    return meta


# ----------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------


def _safetensors_bytes(delta: torch.Tensor, extra: dict[str, str] | None = None) -> bytes:
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), **(extra or {})}
    return safetensors.torch.save({TENSOR_KEY: delta}, metadata=header)


def perturbation_png(delta: torch.Tensor, amplify: float | None = None) -> tuple[bytes, float]:
    """Render a perturbation as an RGB PNG: pixel = clip(0.5 + delta · scale, 0, 1).

    Args:
        delta: (3, H, W) perturbation in pixel units.
        amplify: the scale; default ``0.5 / max|delta|`` so that the largest entry reaches black or white.

    Returns:
        ``(png_bytes, scale)``: an H×W RGB PNG (mid-grey = 0; an all-zero delta is plain grey with scale 1.0)
        whose text chunk "Description" reads ``"amplified ×{scale:.1f}: grey = 0"``.
    """
    delta = _validate_delta(delta, "the perturbation")
    if amplify is None:
        peak = float(delta.abs().max())
        scale = 0.5 / peak if peak > 0 else 1.0
    else:
        try:
            scale = float(amplify)
        except (TypeError, ValueError):
            raise ParameterError(f"amplify must be a positive number; got {amplify!r}") from None
        if not math.isfinite(scale) or scale <= 0:
            raise ParameterError(f"amplify must be a positive finite number; got {amplify!r}")
    image = (0.5 + delta.double() * scale).clamp(0.0, 1.0)
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    info = PngInfo()
    info.add_text("Description", f"amplified ×{scale:.1f}: grey = 0")
    info.add_text("Software", "UAP Explorer")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue(), scale


def uap_to_bytes(delta: torch.Tensor, metadata: dict) -> bytes:
    """A self-contained safetensors file (for downloads): tensor "delta" plus the metadata JSON embedded
    in the safetensors header under ``"uap_metadata"`` (with the same keys :func:`save_uap` adds)."""
    delta = _validate_delta(delta, "the perturbation")
    text = _metadata_json(_full_metadata(delta, metadata))
    return _safetensors_bytes(delta, {EMBEDDED_METADATA_KEY: text})


def _sibling(path: Path, suffix: str) -> Path:
    """``stem.safetensors`` -> ``stem<suffix>``; only the last suffix changes (``a.v2.json``)."""
    return path.with_suffix(suffix)


def save_uap(delta: torch.Tensor, metadata: dict, path: str | os.PathLike, png: bool = True) -> Path:
    """Save a perturbation as ``<stem>.safetensors`` + ``<stem>.json`` (+ ``<stem>.png``), atomically.

    Args:
        delta: (3, H, W) float perturbation in pixel units; stored as contiguous fp32 on CPU.
        metadata: JSON-able dict (model, algorithm, params, eps, norm, seed, ...). The JSON file gets it plus
            ``format_version``, ``shape`` [3, H, W], ``linf``, ``l2``, ``created`` (ISO-8601 UTC) and
            ``library_versions``.
        path: the .safetensors path; the suffix is appended if missing. Parent folders are created.
        png: also write the amplified preview :func:`perturbation_png` (if False, a stale preview of an
            earlier artifact with this stem is removed).

    Returns:
        The .safetensors path.

    Raises:
        ArtifactError: invalid ``delta``/metadata, or a write failed (e.g. disk full); then no partial file is
            left and an earlier artifact of the same name is unchanged.
    """
    delta = _validate_delta(delta, "the perturbation")
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        path = path.with_name(path.name + SAFETENSORS_SUFFIX)
    text = _metadata_json(_full_metadata(delta, metadata))
    files = {path: _safetensors_bytes(delta), _sibling(path, ".json"): text.encode("utf-8")}
    if png:
        files[_sibling(path, ".png")] = perturbation_png(delta)[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_files_atomically(files)
        if not png:
            _sibling(path, ".png").unlink(missing_ok=True)
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ArtifactError(f"could not save {path}: {reason}") from e
    return path


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    """Guess a file's format from its first bytes: "safetensors", "zip", "pickle", "npy", "mat" or None."""
    if data.startswith(_MAGIC_NPY):
        return "npy"
    if data.startswith(_MAGIC_MAT):
        return "mat"
    if data.startswith(_MAGIC_ZIP):
        return "zip"
    if len(data) >= 10:  # before the pickle check: a header length of 128 + 256k also starts with 0x80
        n = int.from_bytes(data[:8], "little")
        if 2 <= n <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors"
    if data.startswith(_MAGIC_PICKLE):
        return "pickle"
    return None


_DESCRIPTIONS = {
    "zip": "a zip archive (e.g. a torch.save checkpoint)",
    "pickle": "a Python pickle, which is never unpickled from a .safetensors name",
    "npy": "a NumPy .npy array",
    "mat": "a MATLAB .mat file",
    None: "unrecognised content",
}


def _decode_safetensors(data: bytes, source: str) -> tuple[torch.Tensor, dict[str, str]]:
    """Return (tensor, safetensors header metadata)."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        tensors = safetensors.torch.load(data)
    except Exception as e:
        raise ArtifactError(f"{source} is not a valid safetensors file: {e}") from e
    header_meta = header.get("__metadata__") or {}
    if header_meta.get("format") == FORMAT_NAME:
        try:
            version = int(header_meta.get("format_version", FORMAT_VERSION))
        except ValueError:
            version = FORMAT_VERSION
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"{source} was written by a newer UAP Explorer (format version {version}; this one reads up to "
                f"{FORMAT_VERSION}); please upgrade"
            )
    if TENSOR_KEY in tensors:
        return tensors[TENSOR_KEY], header_meta
    if len(tensors) == 1:
        return next(iter(tensors.values())), header_meta
    names = ", ".join(sorted(tensors)) or "none"
    raise ArtifactError(f"{source} holds no tensor named {TENSOR_KEY!r} (tensors: {names})")


def _decode_torch(data: bytes, source: str) -> torch.Tensor:
    """A torch.save file (zip or legacy), read by :func:`uap_core.safe_pickle.read_torch_file` without unpickling:
    a tensor, or a dict with a "delta" tensor (or exactly one tensor); anything else is refused."""
    obj = read_torch_file(data, source)
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        if isinstance(obj.get(TENSOR_KEY), torch.Tensor):
            return obj[TENSOR_KEY]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise ArtifactError(
        f"{source} holds a {type(obj).__name__}, not a perturbation tensor (expected a tensor or a dict with "
        f"a {TENSOR_KEY!r} tensor)"
    )


def _decode_npy(data: bytes, source: str) -> torch.Tensor:
    """``np.load(allow_pickle=False)``: object arrays (which need unpickling) are refused."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ArtifactError(
                f"refused to load {source}: it is an object array, which would need unpickling (can run "
                "arbitrary code); save a float array instead"
            ) from None
        raise ArtifactError(f"{source} is not a valid .npy file: {e}") from e
    except Exception as e:
        raise ArtifactError(f"{source} is not a valid .npy file: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise ArtifactError(f"{source} is not a single .npy array")
    return _numpy_to_tensor(arr, source)


def _decode(data: bytes, name: str, conversion: published.Conversion = published.Conversion()
            ) -> tuple[torch.Tensor, dict | None, str]:
    """Decode file content into (raw tensor, embedded metadata or None, format).

    ``.safetensors`` must hold safetensors (read as is: the native format); ``.pt``/``.pth``/``.npy``/``.mat`` and
    unknown suffixes are dispatched on the content's magic bytes (all the readers are safe), falling back on the
    suffix, and then converted from the published layouts (:func:`uap_core.published.convert`); a conversion is
    recorded as ``{"metadata_missing": True, "published": {...}}``.
    """
    suffix = Path(name).suffix.lower()
    sniffed = _sniff(data)
    if suffix == SAFETENSORS_SUFFIX and sniffed != "safetensors":
        raise ArtifactError(f"{name} is not a safetensors file: its content looks like {_DESCRIPTIONS[sniffed]}")
    kind = {"safetensors": "safetensors", "zip": "torch", "pickle": "torch", "npy": "npy", "mat": "mat"}.get(
        sniffed or "")
    if kind is None:
        kind = {".pt": "torch", ".pth": "torch", ".npy": "npy", ".mat": "mat"}.get(suffix)
    if kind is None:
        raise ArtifactError(
            f"{name}: unsupported file; a perturbation must be a .safetensors, .pt/.pth (plain tensor), .npy "
            "or .mat (the UAP paper's) file"
        )
    if kind == "safetensors":
        tensor, header_meta = _decode_safetensors(data, name)
        embedded = header_meta.get(EMBEDDED_METADATA_KEY)
        meta = _parse_metadata(embedded, f"{name} (embedded metadata)") if embedded is not None else None
        return tensor, meta, kind
    if kind == "torch":
        raw: Any = _decode_torch(data, name)
    elif kind == "mat":
        raw = published.read_mat(data, name)
        if raw.dtype.kind in "iu":  # MATLAB integer classes: the 0-255 scale
            raw = raw.astype(np.float64)
    else:
        raw = _decode_npy(data, name)
    tensor, record = published.convert(raw, name, kind, conversion)
    meta = {"metadata_missing": True, "published": record} if record is not None else None
    return tensor, meta, kind


def _finish(
    tensor: torch.Tensor,
    metadata: dict,
    source: str,
    path: Path | None,
    expected_size: tuple[int, int] | None,
    resize: bool,
    eps: float | None,
    norm: str,
) -> UAPArtifact:
    """Validate, optionally resample to ``expected_size`` and check the eps budget."""
    delta = _validate_delta(tensor, source, allow_batch=True)
    metadata = dict(metadata)
    resized = False
    if expected_size is not None and tuple(delta.shape[1:]) != expected_size:
        h, w = expected_size
        if not resize:
            raise ArtifactError(
                f"{source}: perturbation is {_shape_str(delta.shape)} but the model takes 3×{h}×{w}; "
                "pass resize=True (UI: 'resize to fit') to resample it"
            )
        metadata["resized_from"] = [int(delta.shape[1]), int(delta.shape[2])]
        delta = resample_delta(delta, expected_size)
        resized = True
    if eps is not None:
        _check_budget(delta, eps, norm, source, resized)
    return UAPArtifact(delta=delta, metadata=metadata, path=path)


def load_uap(
    path: str | os.PathLike,
    *,
    expected_size: tuple[int, int] | None = None,
    resize: bool = False,
    eps: float | None = None,
    norm: str = "linf",
    layout: str = "auto",
    scale: str | float = "auto",
    channels: str = "auto",
) -> UAPArtifact:
    """Load and validate a perturbation file.

    Args:
        path: a ``.safetensors`` (metadata from the sibling ``.json``, else from the embedded header, else
            ``{"metadata_missing": True}``), ``.pt``/``.pth`` (tensors only, read without unpickling), ``.npy``
            (no pickles) or ``.mat`` file. (1, 3, H, W) is squeezed; fp16/bf16/fp64 become fp32. Published
            layouts (H×W×C, 0-255, BGR: see :mod:`uap_core.published`) are converted and recorded in
            ``metadata["published"]``.
        expected_size: the model's input (height, width); a different size is an error unless ``resize``.
        resize: bilinearly resample to ``expected_size`` (antialiased when shrinking) and record
            ``metadata["resized_from"] = [H, W]``.
        eps: budget in pixel units; exceeding it by more than a relative 1e-4 is an error.
        norm: "linf" (max |entry|) or "l2" (Euclidean norm over all entries).
        layout, scale, channels: override how a non-safetensors array is read: layout "CHW" | "HWC" | "WHC",
            scale "unit" (pixel units) | "255" (0-255, divided by 255), channels "rgb" | "bgr"; "auto" applies
            the rules of :mod:`uap_core.published`.

    Returns:
        :class:`UAPArtifact` with a (3, h, w) float32 CPU ``delta``.

    Raises:
        ArtifactError: missing/unreadable/unsafe file, bad shape or dtype, NaN/Inf, size mismatch, over budget,
            malformed metadata JSON.
        ParameterError: invalid ``expected_size``, ``eps`` or ``norm``.
    """
    expected_size, eps, norm = _check_load_params(expected_size, eps, norm)
    conversion = published.Conversion.of(layout, scale, channels)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"no such file: {path}") from None
    except OSError as e:
        raise ArtifactError(f"could not read {path}: {e.strerror or e}") from e
    tensor, embedded, kind = _decode(data, path.name, conversion)
    metadata: dict | None = None
    if kind == "safetensors":
        json_path = _sibling(path, ".json")
        try:
            text = json_path.read_bytes()
        except FileNotFoundError:
            text = None
        except OSError as e:
            raise ArtifactError(f"could not read metadata file {json_path}: {e.strerror or e}") from e
        metadata = _parse_metadata(text, str(json_path)) if text is not None else embedded
    elif embedded is not None:  # a converted published file: what was done to it
        metadata = embedded
    if metadata is None:
        metadata = {"metadata_missing": True}
    return _finish(tensor, metadata, path.name, path, expected_size, resize, eps, norm)


def load_uap_bytes(
    data: bytes,
    name: str,
    *,
    expected_size: tuple[int, int] | None = None,
    resize: bool = False,
    eps: float | None = None,
    norm: str = "linf",
    layout: str = "auto",
    scale: str | float = "auto",
    channels: str = "auto",
) -> UAPArtifact:
    """Like :func:`load_uap` for in-memory content (uploads); ``name`` (the upload's file name) picks the
    format together with the content's magic bytes. Metadata comes from the embedded header of a
    :func:`uap_to_bytes` file, else ``{"metadata_missing": True}`` (plus ``"published"`` for a converted
    published file). ``path`` of the result is None."""
    expected_size, eps, norm = _check_load_params(expected_size, eps, norm)
    conversion = published.Conversion.of(layout, scale, channels)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ArtifactError(f"{name}: expected file content as bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ArtifactError(f"{name} is empty")
    tensor, embedded, _ = _decode(data, str(name), conversion)
    metadata = embedded if embedded is not None else {"metadata_missing": True}
    return _finish(tensor, metadata, str(name), None, expected_size, resize, eps, norm)


__all__ = [
    "FORMAT_VERSION",
    "UAPArtifact",
    "load_uap",
    "load_uap_bytes",
    "perturbation_png",
    "save_uap",
    "uap_to_bytes",
]
