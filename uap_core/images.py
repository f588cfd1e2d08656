"""Image sources: folders, embedded samples, ``.npz`` arrays, uploads and the CIFAR-10 test set, decoded once into
uint8 tensors.

A source string is ``"samples"`` (photos shipped inside installed packages), ``"cifar10-test"`` (the 10,000
CIFAR-10 test images: a ``.npz`` made once from the downloaded archive, see :mod:`uap_core.datasets`), a folder, a
``.npz`` file or an image file. The two symbolic names win over a file or folder of the same name in the working
folder (name it ``./samples`` to read that).

Every loader returns an :class:`ImageSet` whose ``pixels`` are ``(N, 3, size, size)`` uint8 RGB on the CPU,
prepared like torchvision's ``Resize(resize)`` + ``CenterCrop(size)`` (shorter side to ``resize`` with
antialiased bilinear filtering, then the centre ``size``×``size`` square). Files that cannot be decoded are
skipped and listed in ``ImageSet.skipped``; a source with nothing usable raises :class:`ImageSourceError`.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps

from .datasets import CIFAR10_TEST, cifar10_test_npz
from .errors import ImageSourceError, ParameterError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SYMBOLIC_SOURCES = ("samples", CIFAR10_TEST)  # source strings that name no path
MAX_PIXELS = 64_000_000  # decompression-bomb guard: refuse images above 64 megapixels
_MAX_ASPECT = 4  # longer/shorter side kept before resizing; only the centre is ever used
_WNID_FILE = re.compile(r"^(n\d{8})(?:[_.\-]|$)")
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
_CACHE: OrderedDict[tuple, ImageSet] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8


@dataclass(frozen=True)
class SkippedImage:
    """A file that was left out of an :class:`ImageSet`, with a one-line reason."""

    name: str
    reason: str


@dataclass
class ImageSet:
    """Decoded images: ``pixels`` (N, 3, H, W) uint8 RGB on CPU, ``labels`` (N,) int64 (-1 = unknown)."""

    pixels: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def has_labels(self) -> bool:
        """True when at least one image has a known label (>= 0)."""
        return bool((self.labels >= 0).any())

    def subset(self, indices) -> ImageSet:
        """The images at ``indices`` (sequence, range, array or tensor of ints); keeps ``skipped``/``source``."""
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long).reshape(-1)
        return ImageSet(self.pixels[idx], self.labels[idx], [self.names[i] for i in idx.tolist()],
                        list(self.skipped), self.source)

    def split(self, fit: int, holdout: int, seed: int) -> tuple[ImageSet, ImageSet]:
        """Deterministic random split: a seeded permutation, first ``fit`` images to fit, next ``holdout`` held out."""
        n = len(self)
        if not (isinstance(fit, int) and isinstance(holdout, int)) or fit < 1 or holdout < 1 or fit + holdout > n:
            raise ParameterError(
                f"cannot split {n} images into {fit} to fit and {holdout} held out: need fit >= 1, "
                f"held-out >= 1 and fit + held-out <= {n} (the number of images loaded)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        return self.subset(perm[:fit]), self.subset(perm[fit:fit + holdout])

    def augmented(self, views: int, seed: int, min_scale: float = 0.25) -> ImageSet:
        """``views`` random views of every image: a random crop (area share in [min_scale, 1], aspect ratio in
        [3/4, 4/3], as in Inception-style training) resized back to (H, W), flipped left-right half the time.

        For a small fit set (the embedded samples): a perturbation fitted to many views of few photos relies
        less on where things sit in those exact frames. Deterministic for a seed; labels carry over; names get
        ``#view``. Held-out images are never augmented.
        """
        if views < 1:
            raise ParameterError(f"augment views = {views} is out of range; allowed [1, 64]")
        generator = torch.Generator().manual_seed(int(seed))
        height, width = self.pixels.shape[2:]
        pictures, labels, names = [], [], []
        for image, label, name in zip(self.pixels, self.labels.tolist(), self.names):
            for view in range(views):
                area = height * width * float(torch.empty(1).uniform_(min_scale, 1.0, generator=generator))
                ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)))
                h = min(height, max(8, round(math.sqrt(area / ratio))))
                w = min(width, max(8, round(math.sqrt(area * ratio))))
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                crop = image[None, :, top:top + h, left:left + w].float()
                view_pixels = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=True)[0]
                if bool(torch.rand(1, generator=generator) < 0.5):
                    view_pixels = view_pixels.flip(-1)
                pictures.append(view_pixels.round().clamp(0, 255).to(torch.uint8))
                labels.append(label)
                names.append(f"{name}#{view}")
        return ImageSet(torch.stack(pictures), torch.tensor(labels, dtype=torch.long), names,
                        source=f"{self.source} ({views} augmented views each)")

    def as_float(self, device=None) -> torch.Tensor:
        """``pixels / 255`` as float32 (N, 3, H, W) in [0, 1], on ``device`` (default CPU)."""
        return self.pixels.to(device).float().div_(255.0)

    @classmethod
    def without_pixels(cls, labels: torch.Tensor, names: list[str], source: str = "",
                       skipped: list[SkippedImage] | None = None) -> ImageSet:
        """Names and labels of N images whose pixels are not kept (``pixels`` is an empty (N, 3, 0, 0)): what a
        report of a streamed evaluation lists."""
        return cls(torch.empty((len(names), 3, 0, 0), dtype=torch.uint8), labels, list(names), list(skipped or []),
                   source)


class _Undecodable(Exception):
    """Internal: the reason (without the file name) why bytes are not a usable image."""


def model_geometry(input_size: int, resize_size: int, size: int | None = None) -> tuple[int, int]:
    """(size, resize) in pixels of the images a model takes: the shorter side resized to ``resize``, then the centre
    ``size``×``size`` square (torchvision's Resize + CenterCrop). ``input_size`` / ``resize_size``: the model's
    (its ModelSpec's); ``size``: another input side (None: the model's), the resize scaled in proportion."""
    size = size or input_size
    return size, round(size * resize_size / input_size)


def _check_sizes(size: int, resize: int, limit: int | None = None) -> None:
    if not (isinstance(size, int) and isinstance(resize, int) and 1 <= size <= resize):
        raise ParameterError(f"image size {size!r} and resize {resize!r} must be integers with 1 <= size <= resize")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ParameterError(f"image limit must be a positive integer or None, got {limit!r}")



def _bomb_size(err: Exception) -> str:
    """'W×H' of the image PIL refused as a decompression bomb (found in the traceback), else the pixel count."""
    tb = err.__traceback__
    while tb is not None:
        im = tb.tb_frame.f_locals.get("im")
        if isinstance(getattr(im, "size", None), tuple):
            return f"{im.size[0]}×{im.size[1]}"
        tb = tb.tb_next
    found = re.search(r"\((\d+) pixels\)", str(err))
    return found.group(1) if found else "more than the limit of"


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB; transparency composited on white, 16/32-bit scaled to 8 bits."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.min() >= 0 and a.max() <= 65535):
            a = a / 257.0
        elif img.mode == "F" and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0
        else:  # unknown range: stretch to 0..255
            a = np.nan_to_num(a)
            lo, hi = a.min(), a.max()
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _decode(data: bytes, size: int, resize: int) -> torch.Tensor:
    """Bytes -> (3, size, size) uint8; raises :class:`_Undecodable` with a one-line reason."""
    if not data:
        raise _Undecodable("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Undecodable(f"too large: {_bomb_size(e)} pixels (limit {MAX_PIXELS // 1_000_000} MP)") from None
    except Image.UnidentifiedImageError:
        raise _Undecodable("not a recognised image format (cannot be decoded)") from None
    except Exception as e:
        raise _Undecodable(f"cannot be decoded: {first_line(e)}") from None
    try:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise _Undecodable(f"too large: {w}×{h} pixels (limit {MAX_PIXELS // 1_000_000} MP)")
        if w < 1 or h < 1:
            raise _Undecodable(f"has no pixels ({w}×{h})")
        if img.format == "JPEG":
            img.draft(None, (resize, resize))  # DCT-domain downscale, never below `resize` on either side
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:
            pass  # unreadable EXIF: keep the stored orientation
        w, h = img.size
        short, long_ = min(w, h), max(w, h)
        if long_ > _MAX_ASPECT * short:  # very elongated: keep the centre only (same parity -> same centre)
            keep = _MAX_ASPECT * short + (long_ - _MAX_ASPECT * short) % 2
            off = (long_ - keep) // 2
            img = img.crop((off, 0, off + keep, h) if w > h else (0, off, w, off + keep))
        rgb = _to_rgb(img)
    except _Undecodable:
        raise
    except Exception as e:
        raise _Undecodable(f"cannot be decoded: {first_line(e)}") from None
    t = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # copy: PIL arrays are read-only
    t = TF.resize(t, [resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(t, [size, size]).contiguous()


def decode_image(data: bytes, name: str, size: int, resize: int) -> torch.Tensor:
    """Decode image bytes to a (3, size, size) uint8 RGB tensor.

    EXIF orientation is applied, any colour mode is converted to RGB, the shorter side is resized to
    ``resize`` (bilinear, antialiased) and the centre ``size``×``size`` square is cut out.
    Raises :class:`ImageSourceError` naming ``name`` when the bytes are not a usable image.
    """
    _check_sizes(size, resize)
    try:
        return _decode(bytes(data), size, resize)
    except _Undecodable as e:
        raise ImageSourceError(f"{name}: {e}") from None


@lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    from .bundled import assets_dir

    path = assets_dir() / "imagenet_wnids.txt"
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(wnids) != 1000:
        raise ImageSourceError(f"{path} must list 1000 ImageNet wnids, found {len(wnids)}")
    return {w: i for i, w in enumerate(wnids)}


def imagenet_wnids() -> list[str]:
    """The 1000 sorted ImageNet wnids (class index = position), from ``assets/imagenet_wnids.txt``."""
    return list(_wnid_index())


def _labeller(class_names: list[str] | None):
    """A function ``relative path -> label``: a ``<wnid>_*`` file name (1000-class models only), else the parent
    folder as a wnid (1000-class), a class name (case-insensitive, ``_`` = space) or a class index, else -1."""
    wnid = _wnid_index() if class_names is None or len(class_names) == 1000 else {}
    norm = lambda n: " ".join(n.replace("_", " ").lower().split())  # noqa: E731
    by_name: dict[str, int] = {}
    for i, c in enumerate(class_names or []):
        by_name.setdefault(norm(c), i)
    n_classes = len(class_names or [])

    def label(rel: str) -> int:
        parts = rel.replace("\\", "/").split("/")
        m = _WNID_FILE.match(parts[-1])
        if m and m.group(1) in wnid:
            return wnid[m.group(1)]
        if len(parts) < 2:
            return -1
        folder = parts[-2]
        if folder in wnid:
            return wnid[folder]
        if norm(folder) in by_name:
            return by_name[norm(folder)]
        return int(folder) if folder.isdigit() and int(folder) < n_classes else -1
    return label


def _decode_many(items: list[tuple[str, object]], size: int, resize: int, labels: list[int], source: str,
                 where: str) -> ImageSet:
    """Decode ``(name, path-or-bytes)`` items in a small thread pool; undecodable ones go to ``skipped``."""
    def work(item):
        name, src = item
        try:
            data = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
            return _decode(bytes(data), size, resize)
        except _Undecodable as e:
            return SkippedImage(name, str(e))
        except OSError as e:
            return SkippedImage(name, f"cannot be read: {e.strerror or e}")

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = list(pool.map(work, items))
    keep = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    skipped = [r for r in results if isinstance(r, SkippedImage)]
    if not keep:
        raise ImageSourceError(f"no decodable images in {where}: {len(skipped)} files skipped "
                               f"(first reason: {skipped[0].name}: {skipped[0].reason})")
    return ImageSet(torch.stack([results[i] for i in keep]), torch.tensor([labels[i] for i in keep], dtype=torch.int64),
                    [items[i][0] for i in keep], skipped, source)


def _cached(key: tuple, build) -> ImageSet:
    """Return the cached set for ``key`` (a copy sharing the tensors), building it once on a miss."""
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
    if hit is None:
        hit = build()
        with _CACHE_LOCK:
            _CACHE[key] = hit
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return ImageSet(hit.pixels, hit.labels, list(hit.names), list(hit.skipped), hit.source)


def _fingerprint(files: list[Path]) -> tuple:
    """(name, bytes, mtime) of each file: a changed listing or file gives a new cache key."""
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


def _folder_files(path, limit: int | None = None) -> tuple[Path, list[str], list[Path]]:
    """(root, sorted relative names, paths) of the image files under ``path``; at most ``limit``."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ImageSourceError(f"not a folder: {root}")
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        rels += [(base / f).as_posix() for f in filenames
                 if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    if not rels:
        raise ImageSourceError(f"no image files in {root}: accepted extensions are "
                               + ", ".join(IMAGE_EXTENSIONS) + " (any case)")
    rels = sorted(rels)[:limit]
    return root, rels, [root / r for r in rels]


def load_folder(path, size: int, resize: int, class_names: list[str] | None = None,
                limit: int | None = None) -> ImageSet:
    """All images under ``path`` (recursive, sorted, hidden files ignored); at most ``limit`` of them."""
    _check_sizes(size, resize, limit)
    root, rels, files = _folder_files(path, limit)
    key = ("folder", str(root), size, resize, tuple(class_names) if class_names is not None else None, limit,
           _fingerprint(files))
    return _cached(key, lambda: _decode_many(list(zip(rels, files)), size, resize,
                                             list(map(_labeller(class_names), rels)), f"folder {root}", str(root)))


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load_samples(size: int, resize: int, class_names: list[str] | None = None) -> ImageSet:
    """Photos shipped inside installed packages: foolbox's 20 labelled ImageNet images + scikit-image photos (-1)."""
    _check_sizes(size, resize)
    items, labels = _sample_items(class_names)
    key = ("samples", size, resize, tuple(class_names) if class_names is not None else None,
           _fingerprint([p for _, p in items]))
    return _cached(key, lambda: _decode_many(items, size, resize, labels, "embedded samples", "embedded samples"))


def _sample_items(class_names: list[str] | None) -> tuple[list[tuple[str, Path]], list[int]]:
    """The embedded sample photos: (name, path) items and their labels (-1 where unknown)."""
    imagenet = class_names is None or len(class_names) == 1000
    items: list[tuple[str, Path]] = []
    labels: list[int] = []
    fb = _package_dir("foolbox")
    if fb is not None and (fb / "data").is_dir():
        for f in sorted((fb / "data").glob("imagenet_*_*.jpg")):
            items.append((f"foolbox/{f.name}", f))
            labels.append(int(f.stem.rsplit("_", 1)[1]) if imagenet else -1)
    sk = _package_dir("skimage")
    for name in _SKIMAGE_PHOTOS:
        if sk is not None and (sk / "data" / name).is_file():
            items.append((f"skimage/{name}", sk / "data" / name))
            labels.append(-1)
    if not items:
        raise ImageSourceError("no embedded sample images found: install foolbox (pip install foolbox) "
                               "and/or scikit-image (pip install scikit-image)")
    return items, labels


def _npz_array(z, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:  # object arrays refused with allow_pickle=False
        raise ImageSourceError(f"{path}: array '{key}' holds Python objects ({e}); expected a plain numeric "
                               "array (pickled data is not loaded)") from None


def _build_npz(path: Path, size: int, resize: int) -> ImageSet:
    t, labels = _npz_arrays(path)
    t = _resize_crop(t, size, resize)
    return ImageSet(t.contiguous(), labels, [f"#{i}" for i in range(len(t))], [], f"npz {path}")


def _resize_crop(t: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """(N, 3, h, w) uint8 → (N, 3, size, size): shorter side to ``resize``, centre crop (in chunks of 256)."""
    if t.shape[2:] != (size, size):
        t = torch.cat([TF.center_crop(TF.resize(c, [resize], antialias=True), [size, size])
                       for c in t.split(256)])
    return t


def _npz_arrays(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked images (N, 3, h, w) uint8 (a view of the array) and labels (N,) int64 of a .npz."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ImageSourceError(f"{path}: not a readable .npz archive ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ImageSourceError(f"{path}: expected a .npz archive holding 'x' and 'y', found a single .npy array")
    with z:
        if "x" not in z.files or "y" not in z.files:
            raise ImageSourceError(f"{path}: expected arrays 'x' (N,H,W,3 or N,3,H,W images) and 'y' (N integer "
                                   f"labels), found {', '.join(z.files) or 'nothing'}")
        x, y = _npz_array(z, "x", path), _npz_array(z, "y", path)
        if "classes" in z.files:  # optional class names; only checked to be plain (not pickled) data
            _npz_array(z, "classes", path)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise ImageSourceError(f"{path}: 'x' must be 4-D (N,H,W,3) or (N,3,H,W) RGB images, got shape {x.shape}")
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and x.min(initial=0) >= 0 and x.max(initial=0) <= 1):
            raise ImageSourceError(f"{path}: float 'x' must hold values in [0, 1]; found values outside it "
                                   "(store uint8 0..255 or floats in [0, 1])")
        x = np.rint(x * 255.0).astype(np.uint8)
    elif x.dtype.kind in "iu" and x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ImageSourceError(f"{path}: integer 'x' must hold values 0..255, dtype {x.dtype} has others")
        x = x.astype(np.uint8)
    elif x.dtype != np.uint8:
        raise ImageSourceError(f"{path}: 'x' must be uint8 (or float in [0, 1]), got dtype {x.dtype}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ImageSourceError(f"{path}: 'y' must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if len(x) != len(y):
        raise ImageSourceError(f"{path}: 'x' has {len(x)} images but 'y' has {len(y)} labels; they must match")
    if len(x) == 0:
        raise ImageSourceError(f"{path}: holds no images")
    t = torch.from_numpy(np.ascontiguousarray(x if x.shape[3] == 3 else x.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)
    return t, torch.from_numpy(y.astype(np.int64)).clamp_(min=-1)


def load_npz(path, size: int, resize: int) -> ImageSet:
    """Images from a ``.npz`` with ``x`` (N,H,W,3 or N,3,H,W; uint8 or float in [0,1]) and ``y`` (N,) labels."""
    _check_sizes(size, resize)
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ImageSourceError(f"no such file: {p}")
    key = ("npz", str(p), size, resize, _fingerprint([p]))
    return _cached(key, lambda: _build_npz(p, size, resize))


def load_uploads(files: list[tuple[str, bytes]], size: int, resize: int,
                 class_names: list[str] | None = None) -> ImageSet:
    """Uploaded ``(name, bytes)`` files; labels only from ``<wnid>_*`` names. Undecodable ones are skipped."""
    _check_sizes(size, resize)
    if not files:
        raise ImageSourceError("no files uploaded: upload at least one image (" + ", ".join(IMAGE_EXTENSIONS) + ")")
    label = _labeller(class_names)
    labels = [label(Path(name).name) for name, _ in files]
    return _decode_many([(n, bytes(d)) for n, d in files], size, resize, labels, "uploads", "uploads")


def _cifar10_test_or(source: str | os.PathLike) -> str | os.PathLike:
    """``source``, or for ``"cifar10-test"`` the path of its ``.npz`` (fetched and converted once; offline: a
    one-line :class:`~uap_core.download.DownloadError`). A page that wants its own progress bar for the download
    calls :func:`uap_core.datasets.cifar10_test_npz` with its callback first; this then finds the file."""
    if isinstance(source, str) and source.strip() == CIFAR10_TEST:
        return cifar10_test_npz()
    return source


def load_images(source: str | os.PathLike, size: int, resize: int, class_names: list[str] | None = None,
                limit: int | None = None) -> ImageSet:
    """Load ``"samples"``, ``"cifar10-test"``, a folder, a ``.npz`` file or a single image file; at most ``limit``
    images."""
    _check_sizes(size, resize, limit)
    source = _cifar10_test_or(source)
    if isinstance(source, str) and source.strip() == "samples":
        s = load_samples(size, resize, class_names)
    else:
        p = Path(source).expanduser().resolve()
        if p.is_dir():
            return load_folder(p, size, resize, class_names, limit)
        if not p.is_file():
            raise ImageSourceError(f"no such file or folder: {p}")
        if p.suffix.lower() == ".npz":
            s = load_npz(p, size, resize)
        else:
            try:
                data = p.read_bytes()
            except OSError as e:
                raise ImageSourceError(f"{p}: cannot be read: {e.strerror or e}") from None
            pixels = decode_image(data, p.name, size, resize)[None]
            label = torch.tensor([_labeller(class_names)(p.name)], dtype=torch.int64)
            return ImageSet(pixels, label, [p.name], [], f"file {p}")
    return s.subset(range(min(limit, len(s)))) if limit is not None else s


# ---------------------------------------------------------------------------------------------- streaming
STREAM_CHOICES = ("auto", "on", "off")
STREAM_ABOVE = 5000  # "auto" streams a folder of more image files than this


class ImageStream(torch.utils.data.Dataset):
    """Images listed but not decoded: each is read, decoded, resized and cropped when it is asked for — by the
    worker processes of a DataLoader (:func:`stream_batches`) — so a set of any size never sits in memory at once.

    Item i → (pixels (3, size, size) uint8, label int, ok bool), prepared exactly as the in-memory loaders
    prepare it (same decoding, resize and crop); an undecodable file gives zeros and ok=False, and evaluation
    leaves it out. Files (folder, samples, single file) are read one by one; a ``.npz`` archive is read whole
    (its arrays are not seekable) and only the resized copies are made one by one.

    Split / subset like :class:`ImageSet`, with the same seeded permutation: on a folder where every file
    decodes, ``stream.split(f, h, seed)`` holds the same images in the same order as ``ImageSet.split`` (with
    undecodable files the in-memory split permutes only the decodable ones, so the two can differ).
    """

    def __init__(self, items: list[tuple[str, Path]] | None, labels: torch.Tensor, size: int, resize: int,
                 source: str, array: torch.Tensor | None = None, positions: list[int] | None = None) -> None:
        self.items = items  # (name, path) of every listed file (None for an array source)
        self.array = array  # (M, 3, h, w) uint8 for a .npz source
        self.all_labels = labels  # (M,) int64 of every listed image
        self.size, self.resize, self.source = size, resize, source
        total = len(items) if items is not None else int(array.shape[0])  # type: ignore[union-attr]
        self.positions = list(range(total)) if positions is None else list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64, -1 where unknown (from file or folder names: nothing is decoded)."""
        return self.all_labels[torch.as_tensor(self.positions, dtype=torch.long)]

    @property
    def names(self) -> list[str]:
        if self.items is not None:
            return [self.items[i][0] for i in self.positions]
        return [f"#{i}" for i in self.positions]

    @property
    def skipped(self) -> list[SkippedImage]:
        return []  # unknown until decoded

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        position = self.positions[i]
        label = int(self.all_labels[position])
        if self.array is not None:
            picture = _resize_crop(self.array[position:position + 1], self.size, self.resize)[0].contiguous()
            return picture, label, True
        try:
            return _decode(Path(self.items[position][1]).read_bytes(), self.size, self.resize), label, True
        except (_Undecodable, OSError):
            return torch.zeros((3, self.size, self.size), dtype=torch.uint8), label, False

    def subset(self, indices) -> ImageStream:
        """The images at ``indices`` (positions in this stream), still undecoded."""
        idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long).reshape(-1)
        return ImageStream(self.items, self.all_labels, self.size, self.resize, self.source, self.array,
                           [self.positions[i] for i in idx.tolist()])

    def split(self, fit: int, holdout: int, seed: int) -> tuple[ImageStream, ImageStream]:
        """As :meth:`ImageSet.split`: a seeded permutation, first ``fit`` to fit, next ``holdout`` held out."""
        n = len(self)
        if not (isinstance(fit, int) and isinstance(holdout, int)) or fit < 1 or holdout < 1 or fit + holdout > n:
            raise ParameterError(
                f"cannot split {n} images into {fit} to fit and {holdout} held out: need fit >= 1, "
                f"held-out >= 1 and fit + held-out <= {n} (the number of images listed)")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        return self.subset(perm[:fit]), self.subset(perm[fit:fit + holdout])

    def decode(self) -> ImageSet:
        """All of these images in memory (what fitting needs); undecodable files go to ``skipped``."""
        if self.array is not None:
            pixels = _resize_crop(self.array[torch.as_tensor(self.positions, dtype=torch.long)], self.size,
                                  self.resize)
            return ImageSet(pixels.contiguous(), self.labels, self.names, [], self.source)
        if not self.positions:
            return ImageSet(torch.empty((0, 3, self.size, self.size), dtype=torch.uint8),
                            torch.empty(0, dtype=torch.int64), [], [], self.source)
        items = [self.items[i] for i in self.positions]  # type: ignore[index]
        return _decode_many(items, self.size, self.resize, self.labels.tolist(), self.source, self.source)


def open_stream(source: str | os.PathLike, size: int, resize: int, class_names: list[str] | None = None,
                limit: int | None = None) -> ImageStream:
    """List ``"samples"``, ``"cifar10-test"``, a folder, a ``.npz`` or an image file as an :class:`ImageStream`
    (nothing decoded; labels as :func:`load_images` finds them); at most ``limit`` images."""
    _check_sizes(size, resize, limit)
    source = _cifar10_test_or(source)
    if isinstance(source, str) and source.strip() == "samples":
        items, labels = _sample_items(class_names)
        stream = ImageStream(items, torch.tensor(labels, dtype=torch.int64), size, resize, "embedded samples")
    else:
        p = Path(source).expanduser().resolve()
        if p.is_dir():
            root, rels, files = _folder_files(p, limit)
            labels = torch.tensor(list(map(_labeller(class_names), rels)), dtype=torch.int64)
            return ImageStream(list(zip(rels, files)), labels, size, resize, f"folder {root}")
        if not p.is_file():
            raise ImageSourceError(f"no such file or folder: {p}")
        if p.suffix.lower() == ".npz":
            array, labels = _npz_arrays(p)
            stream = ImageStream(None, labels, size, resize, f"npz {p}", array=array)
        else:
            labels = torch.tensor([_labeller(class_names)(p.name)], dtype=torch.int64)
            return ImageStream([(p.name, p)], labels, size, resize, f"file {p}")
    return stream.subset(range(min(limit, len(stream)))) if limit is not None else stream


def should_stream(choice: str, source: str | os.PathLike) -> bool:
    """Whether to stream ``source``: ``choice`` "on", "off", or "auto" — a folder of more than
    :data:`STREAM_ABOVE` image files (listing it decodes nothing)."""
    if choice not in STREAM_CHOICES:
        raise ParameterError(f"stream {choice!r} is not allowed; choose one of {', '.join(STREAM_CHOICES)}")
    if choice != "auto":
        return choice == "on"
    if isinstance(source, str) and source.strip() in SYMBOLIC_SOURCES:
        return False
    p = Path(source).expanduser()
    if not p.is_dir():
        return False
    try:
        return len(_folder_files(p)[1]) > STREAM_ABOVE
    except ImageSourceError:
        return False


def default_workers() -> int:
    """DataLoader worker processes per rank: the machine's cores shared by its ranks, 1 to 8."""
    from .distributed import local_world_size

    return max(1, min(8, (os.cpu_count() or 1) // local_world_size()))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is per image: one thread each, the worker processes run side by side


def _collate(items: list[tuple[torch.Tensor, int, bool]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels, labels, ok = zip(*items)
    return torch.stack(pixels), torch.tensor(labels, dtype=torch.int64), torch.tensor(ok, dtype=torch.bool)


STREAM_CHUNK = 64  # images per DataLoader batch: what a worker hands over through shared memory at once


def stream_batches(images: ImageStream, positions: range, batch_size: int, workers: int | None = None,
                   pin_memory: bool = False, chunk: int = STREAM_CHUNK):
    """Batches of ``images[positions]`` in order, ``batch_size`` images each (the last one smaller): (pixels
    (b, 3, size, size) uint8, labels (b,) int64, ok (b,) bool).

    ``workers`` processes decode (None: :func:`default_workers`; 0: in this process) and hand over chunks of at
    most ``chunk`` images that never straddle two batches; at most 2·workers chunks are in flight, so memory does
    not grow with the number of images (nor with a large batch: the shared-memory segments stay small).
    pin_memory: the batches in page-locked memory, for asynchronous copies to a GPU.
    """
    part = images.subset(positions)
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ParameterError(f"workers = {workers} must be 0 (decode in this process) or more")
    batch_size, chunk = max(1, int(batch_size)), max(1, int(chunk))
    chunks = [list(range(start, min(start + chunk, stop, len(part))))
              for stop in range(batch_size, len(part) + batch_size, batch_size)
              for start in range(stop - batch_size, min(stop, len(part)), chunk)]
    workers = min(workers, len(chunks))
    loader = torch.utils.data.DataLoader(
        part, batch_sampler=chunks, num_workers=workers, collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
        persistent_workers=False)
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    count, done = 0, 0
    for piece in loader:
        pending.append(piece)
        count += len(piece[0])
        if count == min(batch_size, len(part) - done):
            pixels, labels, ok = (torch.cat(parts) if len(pending) > 1 else parts[0] for parts in zip(*pending))
            yield (pixels.pin_memory() if pin_memory else pixels), labels, ok
            done += count
            pending, count = [], 0
