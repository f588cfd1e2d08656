"""``file:PATH?size=…&mean=…&std=…``: your own classifier saved with ``torch.jit.save`` (TorchScript) or
``torch.export.save`` (``.pt2``).

:func:`uap_core.models.get_spec`, :func:`~uap_core.models.model_status` and :func:`~uap_core.models.load_model`
resolve these names through this module's row of the family table (:data:`FAMILY`: :func:`file_spec`,
:func:`file_status`, :func:`build_file`); see :func:`parse_file_name` for the options. The network is wrapped in
:class:`~uap_core.models.spec.Classifier` by ``load_model``: input (N, 3, H, W) in [0, 1], output (N, classes)
logits.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelUnavailableError, ParameterError, first_line
from ..safe_pickle import UnsafePickleError, check_torch_pickle
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelFamily, ModelSpec, ModelStatus, class_labels, name_options

FILE_PREFIX = "file:"
FORM = ("file:PATH?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225  your TorchScript (torch.jit.save) or "
        "torch.export (.pt2) classifier; optional resize=256, labels=imagenet|cifar10")
_FILE_OPTIONS = ("size", "resize", "mean", "std", "labels")


def _triple(name: str, key: str, text: str) -> tuple[float, float, float]:
    if text.lower() == "imagenet":
        return IMAGENET_MEAN if key == "mean" else IMAGENET_STD
    parts = text.split("/")
    try:
        values = tuple(float(v) for v in parts)
    except ValueError:
        raise ParameterError(f"{name}: {key} must be one number or three joined by '/' (e.g. "
                             f"{key}=0.485/0.456/0.406), or 'imagenet'; got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
        raise ParameterError(f"{name}: {key} needs 1 or 3 finite values{' above 0' if key == 'std' else ''}; "
                             f"got {text!r}")
    return values  # type: ignore[return-value]


def _whole(name: str, key: str, text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ParameterError(f"{name}: {key} must be a whole number of pixels; got {text!r}") from None
    if not low <= value <= 4096:
        raise ParameterError(f"{name}: {key} must lie in [{low}, 4096]; got {value}")
    return value


@dataclass(frozen=True)
class FileModelName:
    """A parsed ``file:`` name. path: the model file; size/resize: pixels (None: from the file or the default);
    mean/std: in [0, 1] pixel units; labels: "imagenet" | "cifar10" | None (ImageNet names for 1000 outputs,
    else "class i")."""

    path: Path
    size: int | None
    resize: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: str | None


def parse_file_name(name: str) -> FileModelName:
    """Parse ``file:PATH[?key=value&...]``. Options:

    * ``size`` — the square input side in pixels (default: the exported program's input size, else 224);
    * ``resize`` — the shorter image side before the centre crop (default: size for inputs up to 64 px, else
      round(size / 0.875), ImageNet's 256 → 224);
    * ``mean``, ``std`` — the normalisation the model expects, applied to pixels in [0, 1]: one number or three
      joined by ``/`` (commas would split the name into an ensemble), or ``imagenet`` (default ImageNet's);
    * ``labels`` — ``imagenet`` or ``cifar10`` class names (default: ImageNet's for 1000 outputs, else "class i").

    The file must be a ``torch.jit.save`` (TorchScript) archive or a ``torch.export.save`` ``.pt2`` archive taking
    (N, 3, size, size) normalised images and returning (N, classes) logits (a program exported with a fixed batch
    size runs in chunks of it). Export in eval mode: a torch.export graph keeps the mode it was exported in.

    What loading runs: ``torch.jit.load`` reads the archive with TorchScript's own unpickler, which builds only
    tensors and TorchScript types (no arbitrary Python objects); calling the model then runs the file's
    TorchScript code (torch operators, no Python) — so, as with any model, load files you trust.
    ``torch.export.load`` unpickles weights and constants stored with ``use_pickle`` (``weights_only=False``) and
    opaque objects (``pickle.loads``), so a ``.pt2`` is audited first: every pickle it would load must be a plain
    tensor file (:func:`uap_core.safe_pickle.check_torch_pickle`, read without unpickling), and pickled Python
    objects or compiled payloads (AOTInductor, ExecuTorch) are refused.
    """
    body = name[len(FILE_PREFIX):]
    path_text, _, query = body.partition("?")
    if not path_text.strip():
        raise ParameterError(f"{name}: name the model file, e.g. file:/path/model.pt?size=224")
    options = name_options(name, query, _FILE_OPTIONS)
    size = _whole(name, "size", options["size"], 16) if "size" in options else None
    resize = _whole(name, "resize", options["resize"], 16) if "resize" in options else None
    labels = options.get("labels", "").lower() or None
    if labels not in (None, "imagenet", "cifar10"):
        raise ParameterError(f"{name}: labels must be imagenet or cifar10 (default: ImageNet names for 1000 "
                             f"outputs, else 'class i'); got {options['labels']!r}")
    return FileModelName(Path(path_text).expanduser(), size, resize,
                         _triple(name, "mean", options.get("mean", "imagenet")),
                         _triple(name, "std", options.get("std", "imagenet")), labels)


# ------------------------------------------------------------------------- loading the file
class _ExportedNetwork(nn.Module):
    """A torch.export program as a module. Its graph fixes train/eval behaviour at export time (so ``train()``
    does not recurse into it: export the model in eval mode); a program exported with a fixed batch size is run
    in chunks of that size (the last one zero-padded)."""

    def __init__(self, program: nn.Module, batch: int | None) -> None:
        super().__init__()
        self.program = program
        self.batch = batch

    def train(self, mode: bool = True) -> "_ExportedNetwork":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        outputs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start:start + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outputs.append(self.program(chunk)[:n])
        return torch.cat(outputs)


def _archive_kind(path: Path) -> tuple[str, list[str]]:
    """("torchscript" | "export", member names) of a model file; ModelUnavailableError for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        why = "not a zip archive" if isinstance(exc, zipfile.BadZipFile) else str(exc)
        raise ModelUnavailableError(
            f"{path} is not a TorchScript or torch.export file ({why}); "
            f"save the model with torch.jit.save(torch.jit.script(model), 'model.pt') or "
            f"torch.export.save(torch.export.export(model, (x,)), 'model.pt2')") from None
    if any("/code/__torch__" in n for n in names) and any(n.endswith("/data.pkl") for n in names):
        return "torchscript", names
    if any(n.count("/") == 1 and n.endswith("/archive_format") for n in names):
        return "export", names
    if any(n.endswith("/data.pkl") for n in names):
        raise ModelUnavailableError(
            f"{path} is a torch.save checkpoint (weights or a pickled module), not a TorchScript or torch.export "
            f"model: save the model with torch.jit.save(torch.jit.script(model), 'model.pt') or "
            f"torch.export.save(torch.export.export(model, (x,)), 'model.pt2'); for a timm architecture use "
            f"timm:ARCH with --weights {path.name}")
    raise ModelUnavailableError(f"{path} is a zip archive but not a TorchScript or torch.export file")


def _audit_export(path: Path, names: list[str]) -> None:
    """Refuse a .pt2 whose loading would unpickle anything but tensors (torch.export.load unpickles pickled
    weights/constants with ``weights_only=False`` and opaque objects with ``pickle.loads``) or that carries
    compiled code (AOTInductor/ExecuTorch/MTIA payloads)."""
    root = names[0].split("/", 1)[0] + "/" if names else ""
    rel = {n[len(root):]: n for n in names if n.startswith(root)}
    with zipfile.ZipFile(path) as archive:
        def audit(member: str) -> None:
            try:
                check_torch_pickle(archive.read(rel[member]), f"{path.name}:{member}")
            except UnsafePickleError as exc:
                raise ModelUnavailableError(f"refused to load {path}: {member} {exc.what}; a .pt2 whose weights "
                                            f"need unpickling can run arbitrary code") from None
            except Exception as exc:
                raise ModelUnavailableError(f"refused to load {path}: {member} is not a plain tensor file "
                                            f"({first_line(exc)})") from None

        for member in rel:
            if member.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")):
                raise ModelUnavailableError(f"refused to load {path}: it carries compiled code ({member}); only "
                                            f"plain torch.export programs are loaded")
            if member.startswith("data/sample_inputs/") or (
                    member.startswith(("data/weights/", "data/constants/")) and member.endswith(".pt")):
                audit(member)
            if member.startswith(("data/weights/", "data/constants/")) and member.endswith("_config.json"):
                try:
                    config = json.loads(archive.read(rel[member])).get("config", {})
                except (ValueError, AttributeError):
                    raise ModelUnavailableError(f"{path}: {member} is not valid JSON") from None
                folder = member.rsplit("/", 1)[0] + "/"
                for entry in config.values():
                    file = str(entry.get("path_name", ""))
                    if file.startswith(("custom_obj_", "opaque_obj_")):
                        raise ModelUnavailableError(
                            f"refused to load {path}: it holds a pickled Python object ({folder}{file}), which "
                            f"would be unpickled (can run arbitrary code)")
                    if entry.get("use_pickle") and folder + file in rel:
                        audit(folder + file)


def _static_input(program) -> tuple[int | None, int | None]:
    """(batch, side) fixed by a torch.export program's first input, None where dynamic or unknown."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                shape = node.meta["val"].shape
                batch = shape[0] if isinstance(shape[0], int) else None
                side = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None
                return batch, side
    except (AttributeError, KeyError, IndexError, TypeError):
        pass
    return None, None


def _load_file_network(path: Path) -> tuple[nn.Module, str, int | None]:
    """(network, "TorchScript" | "torch.export", the exported input side or None), on the CPU."""
    if not path.is_file():
        raise ModelUnavailableError(f"model file not found: {path}")
    kind, names = _archive_kind(path)
    if kind == "torchscript":
        try:
            return torch.jit.load(str(path), map_location="cpu"), "TorchScript", None
        except Exception as exc:
            raise ModelUnavailableError(f"cannot load the TorchScript file {path}: "
                                        f"{first_line(exc)}") from None
    _audit_export(path, names)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelUnavailableError(f"cannot load the torch.export file {path}: "
                                    f"{first_line(exc)}") from None
    batch, side = _static_input(program)
    return _ExportedNetwork(program.module(), batch), "torch.export", side


def _logits_width(network: nn.Module, size: int, source: str) -> int:
    """Run two zero images through ``network``; the output must be an (N, classes) tensor."""
    try:
        with torch.no_grad():
            out = network(torch.zeros(2, 3, size, size))
    except Exception as exc:
        raise ModelUnavailableError(f"{source} fails on a 2×3×{size}×{size} input "
                                    f"({type(exc).__name__}: {first_line(exc)}); "
                                    f"check size=") from None
    if not isinstance(out, torch.Tensor):
        raise ModelUnavailableError(f"{source} returns a {type(out).__name__}, not an (N, classes) tensor of logits")
    if out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 2 or not out.is_floating_point():
        raise ModelUnavailableError(f"{source} returns a {'×'.join(map(str, out.shape))} {out.dtype} tensor for 2 "
                                    f"images; a classifier must return (N, classes) float logits")
    return int(out.shape[1])


@lru_cache(maxsize=32)
def _file_spec_cached(name: str, path: str, mtime_ns: int, nbytes: int) -> ModelSpec:
    parsed = parse_file_name(name)
    network, kind, side = _load_file_network(Path(path))
    if parsed.size is not None and side is not None and parsed.size != side:
        raise ParameterError(f"{name}: the exported program takes {side}×{side} inputs, not size={parsed.size}")
    size = parsed.size or side or 224
    resize = parsed.resize or (size if size <= 64 else round(size / 0.875))
    if resize < size:
        raise ParameterError(f"{name}: resize ({resize}) must be at least size ({size})")
    count = _logits_width(network, size, f"{kind} file {path}")
    dataset, labels = class_labels(name, count, parsed.labels)
    return ModelSpec(name=name, title=f"{Path(path).name} ({kind}, {count} classes)", family="file",
                     dataset=dataset, input_size=size, resize_size=resize, mean=parsed.mean, std=parsed.std,
                     labels=labels)


def file_spec(name: str) -> ModelSpec:
    path = parse_file_name(name).path
    try:
        stat = path.stat()
    except OSError:
        raise ModelUnavailableError(f"model file not found: {path}") from None
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is not a file")
    return _file_spec_cached(name, str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def build_file(spec: ModelSpec, weights: Path | None = None, pretrained: bool = True,
               download: bool = True) -> nn.Module:
    """The network of a ``file:`` spec (the file carries its own weights: ``weights``, ``pretrained`` and
    ``download`` do not apply)."""
    network, kind, _ = _load_file_network(parse_file_name(spec.name).path)
    count = _logits_width(network, spec.input_size, f"{kind} file {parse_file_name(spec.name).path}")
    if count != spec.num_classes:
        raise ModelUnavailableError(f"{spec.name} changed since it was inspected ({count} outputs, not "
                                    f"{spec.num_classes})")
    return network


def file_status(spec: ModelSpec) -> ModelStatus:
    """A ``file:`` model whose spec could be made loads: the spec was made by loading the file."""
    return ModelStatus(spec, "available", f"{spec.title}: input {spec.input_size}px, mean {spec.mean}, std {spec.std}")


FAMILY = ModelFamily("file", build=build_file, status=file_status, prefix=FILE_PREFIX, spec_of=file_spec,
                     takes_weights_file=False)

__all__ = ["FAMILY", "FILE_PREFIX", "FORM", "FileModelName", "build_file", "file_spec", "file_status",
           "parse_file_name"]
