"""Models named on demand: ``timm:ARCH[.TAG]`` (any timm classifier with timm's own preprocessing) and
``file:PATH?size=…&mean=…&std=…`` (your TorchScript or torch.export classifier).

:func:`uap_core.models.get_spec`, :func:`~uap_core.models.model_status` and :func:`~uap_core.models.load_model`
resolve these names through :func:`dynamic_spec`, :func:`timm_status`, :func:`build_timm` and :func:`build_file`,
so the CLI's ``--model``, :class:`~uap_core.run.RunConfig` and ensembles take them like registry names. Specs and
networks are the registry's own types (:class:`~uap_core.models.ModelSpec`; the network is wrapped in
:class:`~uap_core.models.Classifier` by ``load_model``): input (N, 3, H, W) in [0, 1], output (N, classes) logits.

Nothing here downloads at import or listing time: timm's hub is asked only when loading ``timm:`` weights that are
neither given (``weights=``) nor in timm's cache, and only when it answers within a few seconds.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .errors import ModelUnavailableError, ParameterError, first_line
from .models import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, ModelStatus, _load_state_dict

TIMM_PREFIX = "timm:"
FILE_PREFIX = "file:"
DYNAMIC_FORMS = (
    "timm:ARCH[.TAG]  any timm model with timm's preprocessing, e.g. timm:convnext_tiny (weights: --weights FILE, "
    "timm's cache, or its hub when online; names: python -c \"import timm; print(timm.list_models('*convnext*', "
    "pretrained=True))\")",
    "file:PATH?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225  your TorchScript (torch.jit.save) or "
    "torch.export (.pt2) classifier; optional resize=256, labels=imagenet|cifar10",
)
_FILE_OPTIONS = ("size", "resize", "mean", "std", "labels")
_HUB_PROBE_SECONDS = 3.0


def is_dynamic_name(name: str) -> bool:
    """A ``timm:`` or ``file:`` name (resolved on demand, not listed by :func:`list_models`)."""
    return name.startswith((TIMM_PREFIX, FILE_PREFIX))


def _query(name: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in allowed:
            raise ParameterError(f"{name}: unknown option {part!r}; allowed: {', '.join(allowed)} (as key=value "
                                 f"joined by &)")
        options[key] = value.strip()
    return options


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
    tensor file (:func:`uap_core.published.check_torch_pickle`, read without unpickling), and pickled Python
    objects or compiled payloads (AOTInductor, ExecuTorch) are refused.
    """
    body = name[len(FILE_PREFIX):]
    path_text, _, query = body.partition("?")
    if not path_text.strip():
        raise ParameterError(f"{name}: name the model file, e.g. file:/path/model.pt?size=224")
    options = _query(name, query, _FILE_OPTIONS)
    size = _whole(name, "size", options["size"], 16) if "size" in options else None
    resize = _whole(name, "resize", options["resize"], 16) if "resize" in options else None
    labels = options.get("labels", "").lower() or None
    if labels not in (None, "imagenet", "cifar10"):
        raise ParameterError(f"{name}: labels must be imagenet or cifar10 (default: ImageNet names for 1000 "
                             f"outputs, else 'class i'); got {options['labels']!r}")
    return FileModelName(Path(path_text).expanduser(), size, resize,
                         _triple(name, "mean", options.get("mean", "imagenet")),
                         _triple(name, "std", options.get("std", "imagenet")), labels)


def _class_labels(name: str, count: int, wanted: str | None) -> tuple[str, tuple[str, ...] | None]:
    """(dataset, labels) of a model with ``count`` outputs."""
    if wanted == "cifar10":
        if count != 10:
            raise ParameterError(f"{name}: labels=cifar10 needs 10 outputs; the model has {count}")
        return "cifar10", None
    if wanted == "imagenet" or (wanted is None and count == 1000):
        if count != 1000:
            raise ParameterError(f"{name}: labels=imagenet needs 1000 outputs; the model has {count}")
        return "imagenet", None
    return f"{count} classes", tuple(f"class {i}" for i in range(count))


# ------------------------------------------------------------------------- timm
def _timm():
    try:
        import timm
    except ImportError:
        raise ModelUnavailableError("timm: models need the timm package: pip install -r requirements.txt "
                                    "(or pip install timm)") from None
    return timm


def _timm_arch(name: str) -> tuple[str, dict[str, str]]:
    body, _, query = name[len(TIMM_PREFIX):].partition("?")
    return body.strip(), _query(name, query, ("classes",))


def _timm_spec(name: str) -> ModelSpec:
    timm = _timm()
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    arch, options = _timm_arch(name)
    if not arch or not timm.is_model(arch.partition(".")[0]):
        close = difflib.get_close_matches(arch.partition(".")[0], timm.list_models(), n=5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        family = (close[0] if close else arch or "resnet").split("_")[0]
        raise ParameterError(
            f"unknown timm model {arch!r}{hint}; list names with: python -c \"import timm; "
            f"print(timm.list_models('*{family}*', pretrained=True))\"")
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:  # an unknown pretrained tag
        tags = timm.list_pretrained(arch.partition(".")[0] + ".*")
        raise ParameterError(f"timm model {arch.partition('.')[0]!r} has no pretrained tag "
                             f"{arch.partition('.')[2]!r}; its tags: {', '.join(tags) or 'none'}") from None
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    data = resolve_data_config(pretrained_cfg=cfg_dict)
    _, height, width = data["input_size"]
    if height != width:
        raise ParameterError(f"timm model {arch} takes {height}×{width} inputs; only square inputs are supported")
    crop_pct = float(data.get("crop_pct") or 0.875)
    count = int(cfg_dict.get("num_classes") or 1000)
    if "classes" in options:
        count = int(options["classes"]) if options["classes"].isdigit() else -1
        if not 2 <= count <= 1_000_000:
            raise ParameterError(f"{name}: classes must be a whole number >= 2; got {options['classes']!r}")
    dataset, labels = _class_labels(name, count, None)
    tag = (cfg.tag if cfg is not None else None) or "no pretrained weights"
    return ModelSpec(
        name=name, title=f"{arch.partition('.')[0]} (timm, {tag})", family="timm", dataset=dataset,
        input_size=int(height), resize_size=max(int(height), math.floor(height / crop_pct)),
        mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
        package="timm", weights_file=(cfg_dict.get("hf_hub_id") or cfg_dict.get("url") or None), labels=labels,
        interpolation=str(data.get("interpolation") or "bilinear"))


def _hf_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def _timm_cached_weights(arch: str) -> Path | None:
    """The timm weights of ``arch`` already on disk (Hugging Face cache or torch hub's), without any network."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else
                             ["model.safetensors", "pytorch_model.bin"]):
                found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def _hub_offline() -> str | None:
    """Why timm's hub cannot be reached now (None when it can): HF_HUB_OFFLINE is set, or huggingface.co does not
    answer within a few seconds (checked in a thread, so a hanging DNS lookup cannot hang the caller)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host.partition(":")
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, int(port or 443)), timeout=_HUB_PROBE_SECONDS).close()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_SECONDS + 0.5)
    if not result:
        return f"{host} did not answer within {_HUB_PROBE_SECONDS:g} s"
    if result[0] is not None:
        return f"{host} is unreachable ({type(result[0]).__name__})"
    return None


def _read_state_dict(path: Path) -> dict:
    """A state dict from a .safetensors file (by content) or a torch.save file (``weights_only=True``)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and n > 1:
        try:
            import safetensors.torch

            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:
            raise ModelUnavailableError(f"cannot read safetensors weights {path}: {exc}") from None
    state = _load_state_dict(path)
    for key in ("state_dict_ema", "model_ema", "model"):  # timm training checkpoints
        if isinstance(state.get(key), dict):
            return {k.removeprefix("module."): v for k, v in state[key].items()}
    return state


def timm_status(spec: ModelSpec) -> ModelStatus:
    try:
        _timm()
    except ModelUnavailableError:
        return ModelStatus(spec, "needs package", "pip install timm")
    arch, options = _timm_arch(spec.name)
    if "classes" in options:
        return ModelStatus(spec, "needs weights file", f"a {spec.num_classes}-class head: pass a local weights file")
    found = _timm_cached_weights(arch)
    if found:
        return ModelStatus(spec, "available", f"weights: {found}")
    if not spec.weights_file:
        return ModelStatus(spec, "needs weights file", "timm has no pretrained weights for it: pass a local file")
    return ModelStatus(spec, "needs download", f"{spec.weights_file} (timm downloads it on first load when online), "
                                               f"or pass a local weights file")


def build_timm(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    timm = _timm()
    arch, options = _timm_arch(spec.name)
    kwargs: dict = {"num_classes": spec.num_classes}
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    source = weights or _timm_cached_weights(arch)
    if source is None and "classes" in options:
        raise ModelUnavailableError(f"{spec.name}: a {spec.num_classes}-class head has no hub weights; pass a local "
                                    f"weights file (--weights FILE)")
    if source is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        if cfg is not None and cfg.custom_load and weights is None:  # a foreign format (JAX .npz): timm reads it
            overlay = {"file": str(source), "source": None}
        else:
            overlay = {"state_dict": _read_state_dict(source), "source": None, "num_classes": spec.num_classes}
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelUnavailableError(f"the weights {source} do not fit {spec.name}: "
                                        f"{first_line(exc)}") from None
    hint = (f"pass a local weights file (--weights FILE / weights=FILE: a state dict or .safetensors), or load "
            f"{spec.name} once on a machine with a network so timm caches it")
    if not spec.weights_file:
        raise ModelUnavailableError(f"timm has no pretrained weights for {arch}; {hint}")
    if not download:
        raise ModelUnavailableError(f"the weights of {spec.name} ({spec.weights_file}) are not cached and "
                                    f"downloading is off; {hint}")
    offline = _hub_offline()
    if offline:
        raise ModelUnavailableError(f"the weights of {spec.name} ({spec.weights_file}) are not cached and the hub "
                                    f"cannot be reached ({offline}): no network and no file; {hint}")
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # network errors, hub errors, ...
        raise ModelUnavailableError(f"could not download the weights of {spec.name} ({type(exc).__name__}: "
                                    f"{first_line(exc)}); {hint}") from None


# ------------------------------------------------------------------------- file: TorchScript / torch.export
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
    import zipfile

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
    import json
    import zipfile

    from .published import UnsafePickleError, check_torch_pickle

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
    dataset, labels = _class_labels(name, count, parsed.labels)
    return ModelSpec(name=name, title=f"{Path(path).name} ({kind}, {count} classes)", family="file",
                     dataset=dataset, input_size=size, resize_size=resize, mean=parsed.mean, std=parsed.std,
                     labels=labels)


def _file_spec(name: str) -> ModelSpec:
    path = parse_file_name(name).path
    try:
        stat = path.stat()
    except OSError:
        raise ModelUnavailableError(f"model file not found: {path}") from None
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is not a file")
    return _file_spec_cached(name, str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def build_file(spec: ModelSpec) -> nn.Module:
    network, kind, _ = _load_file_network(parse_file_name(spec.name).path)
    count = _logits_width(network, spec.input_size, f"{kind} file {parse_file_name(spec.name).path}")
    if count != spec.num_classes:
        raise ModelUnavailableError(f"{spec.name} changed since it was inspected ({count} outputs, not "
                                    f"{spec.num_classes})")
    return network


def dynamic_spec(name: str) -> ModelSpec:
    return _timm_spec(name) if name.startswith(TIMM_PREFIX) else _file_spec(name)
