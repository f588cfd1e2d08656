"""``torch.save`` files read without unpickling: tensors inside plain dicts, lists, tuples, numbers and strings.

:func:`read_torch_file` walks the pickle's opcodes with :func:`pickletools.genops` (a parser: it decodes opcodes,
it runs none) and interprets only inert data plus the tensor pattern
``torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, …)``. Nothing is imported and nothing
is called: a global (``os.system``, a custom class, …) is looked at by its name only and refused unless it is one of
the tensor rebuild functions, ``torch.<T>Storage`` or ``collections.OrderedDict``, which are then *interpreted*
here (never called). Storages are made from the archive's bytes with :func:`torch.frombuffer`, and every view is
bounds-checked against its storage before :func:`torch.as_strided`. Used for the published ``.pt``/``.pth``
perturbations (:mod:`uap_core.published`, :func:`uap_core.artifacts.load_uap`) and to audit the pickles inside a
torch.export ``.pt2`` before :func:`torch.export.load` unpickles them (:mod:`uap_core.models.file`).

Why this reader and not ``torch.load(weights_only=True)`` (decided for issue #23; keep whichever is smaller to
trust): the question is what one must audit to believe that loading a hostile file runs no code.

* Here: this module. That it cannot run code is seen by reading :func:`_interpret`: there is no ``import``,
  ``getattr`` or call of anything taken from the file, whatever the opcodes; a bug can only give a wrong value or an
  :class:`~uap_core.errors.ArtifactError`. The answer does not depend on the torch version.
* ``torch.load(weights_only=True)``: torch's ``_weights_only_unpickler`` (593 lines in torch 2.14.1) *calls* the
  globals on its allow-list (145 of them in 2.14.1: rebuild functions, ``torch.Size``, dtypes, devices, sparse,
  quantised and nested tensor rebuilds, …), and that list is process-wide state any imported library may extend
  (``torch.serialization.add_safe_globals``). It only became safe recently: CVE-2025-32434 (code execution despite
  ``weights_only=True``, torch <= 2.5.1, fixed in 2.6.0, the release that also made ``weights_only=True`` the
  default) and CVE-2026-24747 (memory corruption through ``SETITEM`` on a non-dict and storages smaller than
  declared, fixed in 2.10.0) — so a floor of ``torch>=2.10`` would be needed, dropping the torch 2.4–2.9 that
  requirements.txt admits, and the next such flaw would be ours too. Both flaws are refused here by construction
  (:func:`_container` checks the target's type; :func:`_storage_tensor` checks the byte count).
* The ``.pt2`` audit needs "what would an *unrestricted* unpickle do" (``torch.export.load`` unpickles weights with
  ``weights_only=False``); a ``weights_only`` load only answers "is every global on today's allow-list".

So this reader (about 330 lines over :mod:`pickletools`, :mod:`zipfile` and numpy/torch buffer constructors)
is the smaller thing to trust. Model *weights* files given by the user are still read with
``torch.load(weights_only=True)`` (:func:`uap_core.models.spec.load_state_dict`): a state dict may hold what only
torch's loader knows.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ArtifactError

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
    rebuild functions; used by :mod:`uap_core.models.file` to audit the pickles inside a torch.export ``.pt2``."""
    read_torch_file(data, source)


__all__ = ["UnsafePickleError", "check_torch_pickle", "read_torch_file"]
