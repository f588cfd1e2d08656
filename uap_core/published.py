"""Readers for the field's published perturbations, and a torch.save reader that never unpickles.

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
container and the legacy pre-1.6 stream) are read by :func:`read_torch_file`, which walks the pickle's opcodes
with :func:`pickletools.genops` and interprets only inert data (tuples, lists, dicts, numbers, strings) plus the
tensor pattern ``torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, …)``; nothing is
imported and nothing is called, and any other global (``os.system``, a custom class, …) is refused by name.
"""

from __future__ import annotations

import io
import math
import pickletools
import re
import zipfile
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
# torch.save files without unpickling
# ----------------------------------------------------------------------------------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER of the pre-1.6 stream format
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_REBUILD = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
            ("collections", "OrderedDict")}
_MAX_MEMBER_BYTES = 4 << 30  # a zip member announcing more than this is refused (zip bomb)


class UnsafePickleError(ArtifactError):
    """A pickle references something other than plain data and tensors (it is never executed)."""

    def __init__(self, source: str, what: str) -> None:
        super().__init__(
            f"refused to load {source}: it is not a plain tensor file ({what}). Only tensors are read from "
            ".pt/.pth files, because unpickling other objects can run arbitrary code; save the perturbation with "
            "torch.save(delta, path) or as .safetensors")
        self.what = what


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: torch.dtype
    key: str
    numel: int


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Malformed(Exception):
    pass


def _make_global(module: str, name: str, source: str) -> _Global:
    if (module, name) in _REBUILD or (module == "torch" and name in _STORAGE_DTYPES):
        return _Global(module, name)
    raise UnsafePickleError(source, f"it references {module}.{name}")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _Malformed(f"{what} is not a tuple of integers")
    return value


def _persistent(pid: Any, source: str) -> _Storage:
    """('storage', torch.<T>Storage, key, location, numel[, view_metadata]) → _Storage; anything else refused."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise UnsafePickleError(source, f"it has a persistent reference {pid!r:.80} that is not a tensor storage")
    kind, key, numel = pid[1], pid[2], pid[4]
    if not (isinstance(kind, _Global) and kind.module == "torch" and kind.name in _STORAGE_DTYPES):
        raise UnsafePickleError(source, f"its storage type {kind!r:.80} is not a plain tensor storage")
    if len(pid) == 6 and pid[5] is not None:
        raise UnsafePickleError(source, "it uses storage views of the pre-1.0 format")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise _Malformed("malformed storage reference")
    return _Storage(_STORAGE_DTYPES[kind.name], key, numel)


def _reduce(fn: Any, args: Any, source: str) -> Any:
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise UnsafePickleError(source, f"it calls {fn!r:.80}")
    if (fn.module, fn.name) == ("collections", "OrderedDict"):
        if not args:
            return {}
        try:
            return dict(*args)
        except (TypeError, ValueError) as exc:
            raise _Malformed(f"OrderedDict arguments: {exc}") from None
    if fn.name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        if len(args) < 4 or not isinstance(args[0], _Storage) or not isinstance(args[1], int):
            raise _Malformed("a tensor record has the wrong arguments")
        return _TensorRef(args[0], args[1], _ints(args[2], "size"), _ints(args[3], "stride"))
    if fn.name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        if not args or not isinstance(args[0], _TensorRef):
            raise _Malformed("a parameter record holds no tensor")
        return args[0]
    raise UnsafePickleError(source, f"it calls {fn.module}.{fn.name}")


def _interpret(stream: io.BytesIO, source: str) -> Any:
    """Interpret one pickle (up to its STOP) as inert data. Raises UnsafePickleError or _Malformed."""
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        items = stack
        stack = marks.pop()
        return items

    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1 or marks:
                raise _Malformed("the pickle ends with a malformed stack")
            return stack[0]
        if name == "MARK":
            marks.append(stack)
            stack = []
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                      "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(arg)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            items = pop_mark()  # first: it rebinds `stack`
            stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise _Malformed("stack underflow")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            items = pop_mark()
            stack.append(items)
        elif name == "APPEND":
            value = stack.pop()
            _container(stack, list).append(value)
        elif name == "APPENDS":
            items = pop_mark()
            _container(stack, list).extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            _container(stack, dict)[key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            _container(stack, dict).update(zip(items[::2], items[1::2]))
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name == "ADDITEMS":
            items = pop_mark()
            _container(stack, set).update(items)
        elif name == "FROZENSET":
            items = pop_mark()
            stack.append(frozenset(items))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[int(arg)])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_make_global(module, attr, source))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                raise UnsafePickleError(source, "it looks up a global by a computed name")
            stack.append(_make_global(module, attr, source))
        elif name == "BINPERSID":
            stack.append(_persistent(stack.pop(), source))
        elif name == "BUILD":  # attributes set on an object already built (an OrderedDict's _metadata): dropped,
            stack.pop()        # as nothing here has a __setstate__ to run
            if not stack:
                raise _Malformed("stack underflow")
        elif name == "REDUCE":
            args = stack.pop()
            fn = stack.pop()
            stack.append(_reduce(fn, args, source))
        else:  # INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT*, PERSID, buffers: they build or call arbitrary objects
            raise UnsafePickleError(source, f"its pickle uses the {name} opcode, which builds arbitrary objects")
    raise _Malformed("the pickle has no STOP")


def _container(stack: list[Any], kind: type) -> Any:
    if not stack or not isinstance(stack[-1], kind):
        raise _Malformed(f"an item is added to something that is not a {kind.__name__}")
    return stack[-1]


def _storage_tensor(storage: _Storage, raw: bytes, big_endian: bool = False) -> torch.Tensor:
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    if len(raw) < storage.numel * itemsize:
        raise _Malformed(f"storage {storage.key} is truncated ({len(raw)} bytes for {storage.numel} elements)")
    raw = raw[: storage.numel * itemsize]
    if storage.numel == 0:
        return torch.empty(0, dtype=storage.dtype)
    if big_endian and itemsize > 1:
        if storage.dtype == torch.bfloat16:
            raise _Malformed("a big-endian bfloat16 storage")
        np_dtype = torch.empty((), dtype=storage.dtype).numpy().dtype.newbyteorder(">")
        return torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("=")))
    return torch.frombuffer(bytearray(raw), dtype=storage.dtype)


def _materialise(obj: Any, storages: dict[str, torch.Tensor]) -> Any:
    """Replace every _TensorRef by a real tensor (bounds checked) and every _Global left over by its name."""
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key]
        if len(obj.size) != len(obj.stride) or any(s < 0 for s in obj.size + obj.stride) or obj.offset < 0:
            raise _Malformed("a tensor has an invalid size or stride")
        if 0 not in obj.size:
            last = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride))
            if last >= flat.numel():
                raise _Malformed("a tensor reaches past the end of its storage")
        return torch.as_strided(flat, obj.size, obj.stride, obj.offset).clone()
    if isinstance(obj, dict):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_materialise(v, storages) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (_Global, _Storage)):
        return f"<{obj}>"
    return obj


def _refs(obj: Any, found: dict[str, _Storage]) -> dict[str, _Storage]:
    if isinstance(obj, _TensorRef):
        found[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            _refs(v, found)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _refs(v, found)
    return found


def _read_torch_zip(data: bytes, source: str) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _Malformed(f"a broken zip archive ({exc})") from None
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        raise ArtifactError(f"{source} is a TorchScript model, not a perturbation (a model file goes to --model "
                            "file:PATH)")
    if any(n.endswith("/archive_format") for n in names):
        raise ArtifactError(f"{source} is a torch.export program (.pt2), not a perturbation")
    if len(pickles) != 1:
        raise ArtifactError(f"{source} is a zip archive but not a torch.save file (no data.pkl)")
    root = pickles[0].rsplit("/", 1)[0]

    def member(name: str) -> bytes:
        info = archive.getinfo(name)
        if info.file_size > _MAX_MEMBER_BYTES:
            raise _Malformed(f"member {name} announces {info.file_size} bytes")
        return archive.read(info)

    obj = _interpret(io.BytesIO(member(pickles[0])), source)
    big = False
    if f"{root}/byteorder" in names:
        big = member(f"{root}/byteorder").strip() == b"big"
    storages = {}
    for key, storage in _refs(obj, {}).items():
        try:
            raw = member(f"{root}/data/{key}")
        except KeyError:
            raise _Malformed(f"storage {key} is missing from the archive") from None
        storages[key] = _storage_tensor(storage, raw, big)
    return _materialise(obj, storages)


def _read_torch_legacy(data: bytes, source: str) -> Any:
    stream = io.BytesIO(data)
    magic = _interpret(stream, source)
    if magic != _TORCH_LEGACY_MAGIC:
        raise ArtifactError(f"{source} is a plain Python pickle, not a torch.save file; only tensors saved with "
                            "torch.save (or .safetensors/.npy files) are read")
    _interpret(stream, source)  # protocol version
    sys_info = _interpret(stream, source)
    big = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    obj = _interpret(stream, source)
    keys = _interpret(stream, source)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _Malformed("the storage key list is malformed")
    refs = _refs(obj, {})
    storages = {}
    for key in keys:
        if key not in refs:
            raise _Malformed(f"storage {key} is not referenced by any tensor")
        storage = refs[key]
        head = stream.read(8)
        if len(head) != 8:
            raise _Malformed("the file ends inside the storage data")
        numel = int.from_bytes(head, "big" if big else "little")
        itemsize = torch.empty((), dtype=storage.dtype).element_size()
        if numel < 0 or numel * itemsize > len(data):
            raise _Malformed(f"storage {key} announces {numel} elements")
        raw = stream.read(numel * itemsize)
        storages[key] = _storage_tensor(_Storage(storage.dtype, key, numel), raw, big)
    missing = set(refs) - set(storages)
    if missing:
        raise _Malformed(f"storage(s) {', '.join(sorted(missing))} have no data")
    return _materialise(obj, storages)


def read_torch_file(data: bytes, source: str) -> Any:
    """The object a ``torch.save`` file holds, read without unpickling: tensors (CPU, their saved dtype) inside
    plain dicts, lists, tuples, numbers and strings.

    Both containers are read: the zip archive (torch >= 1.6: ``<root>/data.pkl`` + ``<root>/data/<key>``) and the
    legacy stream (magic number, protocol, system info, object, storage keys, then each storage's raw bytes).

    Raises:
        UnsafePickleError (an ArtifactError): the pickle references any global other than the tensor rebuild
            functions, ``torch.<T>Storage`` and ``collections.OrderedDict``, or uses an object-building opcode.
            Nothing in the file is imported or called, whatever it holds.
        ArtifactError: not a torch.save file, or malformed (truncated storages, out-of-range strides, ...).
    """
    try:
        if data.startswith(b"PK\x03\x04"):
            return _read_torch_zip(data, source)
        return _read_torch_legacy(data, source)
    except ArtifactError:
        raise
    except _Malformed as exc:
        raise ArtifactError(f"{source} is not a readable PyTorch file: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError, EOFError, RuntimeError) as exc:  # genops on garbage
        raise ArtifactError(f"{source} is not a readable PyTorch file: {exc or type(exc).__name__}") from None


def check_torch_pickle(data: bytes, source: str) -> None:
    """Refuse (UnsafePickleError) a torch.save blob whose pickle would import or call anything but the tensor
    rebuild functions; used by :mod:`uap_core.models` to audit the pickles inside a torch.export ``.pt2``."""
    read_torch_file(data, source)


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


__all__ = ["Conversion", "MAT_KEY", "UnsafePickleError", "check_torch_pickle", "convert", "read_mat",
           "read_torch_file", "recognise"]
