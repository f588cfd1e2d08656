"""The model types every other module speaks: :class:`ModelSpec` (what a model is, without loading it),
:class:`ModelStatus` (whether it can be loaded now), :class:`Classifier` (normalisation ∘ network, in pixel space)
and :class:`ModelFamily` (one row of the table :func:`uap_core.models.load_model` dispatches over).

This module is the bottom of :mod:`uap_core.models`: it imports no other part of the package, so the families
(:mod:`~uap_core.models.builtin`, :mod:`~uap_core.models.timm`, :mod:`~uap_core.models.file`) and
:mod:`~uap_core.models.ensemble` build on it and :mod:`uap_core.models` (the package) sits on top of them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import ModelUnavailableError, ParameterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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

    Dynamic names (not in :func:`~uap_core.models.list_models`, resolved by :func:`~uap_core.models.get_spec`):

    * ``timm:ARCH[.TAG][?classes=N]`` — family "timm". mean, std, input_size come from timm's pretrained config
      (:func:`timm.data.resolve_data_config`), resize_size = floor(input_size / crop_pct) (timm's eval
      transform); interpolation records timm's resampling (the image loaders resize bilinearly);
      weights_file is the hub repository.
    * ``file:PATH[?size=S&resize=R&mean=a/b/c&std=a/b/c&labels=imagenet|cifar10]`` — family "file": a
      TorchScript or torch.export classifier; see :func:`uap_core.models.file.parse_file_name`.

    labels: class names where they are neither ImageNet's nor CIFAR-10's ("class 0", "class 1", ...).
    """

    name: str
    title: str
    family: str  # its row of uap_core.models.FAMILIES ("efficientnet-lite", "torchvision", "cifar", "timm",
    #              "file"), or "ensemble"
    dataset: str  # "imagenet" | "cifar10" | "N classes"
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


# (spec, local weights file or None, pretrained, download) → the bare network (not yet wrapped in a Classifier)
Builder = Callable[[ModelSpec, Path | None, bool, bool], nn.Module]


def _nothing_missing(spec: ModelSpec) -> list[str]:
    return []


@dataclass(frozen=True)
class ModelFamily:
    """One row of the table of model families (timm's ``_factory`` pattern: one factory over a table).

    name: the :attr:`ModelSpec.family` it answers for. build: see :data:`Builder`. status: whether a spec of the
    family loads offline now (never downloads). Fixed models are listed by ``specs`` (in registry order); names
    resolved on demand start with ``prefix`` and are turned into specs by ``spec_of``. missing_packages: the pip
    packages a spec needs that are not installed (checked before building). takes_weights_file: False where the
    model file carries its own weights (a ``weights=`` file is refused).
    """

    name: str
    build: Builder
    status: Callable[[ModelSpec], ModelStatus]
    specs: Callable[[], Iterable[ModelSpec]] | None = None
    prefix: str | None = None
    spec_of: Callable[[str], ModelSpec] | None = None
    missing_packages: Callable[[ModelSpec], list[str]] = _nothing_missing
    takes_weights_file: bool = True


# ---------------------------------------------------------------------------------------------- shared helpers
def load_state_dict(path: Path) -> dict:
    """The state dict in a ``torch.save`` file, read with ``weights_only=True`` (a ``{"state_dict": …}``
    checkpoint is unwrapped; DataParallel's ``module.`` prefixes are dropped). ModelUnavailableError when the
    file cannot be read or holds no dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, …
        raise ModelUnavailableError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"weights file {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def name_options(name: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """``"a=1&b=2"`` (the part after ``?`` of a dynamic name) → ``{"a": "1", "b": "2"}``; ParameterError for a
    key not in ``allowed`` or a part without ``=``."""
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in allowed:
            raise ParameterError(f"{name}: unknown option {part!r}; allowed: {', '.join(allowed)} (as key=value "
                                 f"joined by &)")
        options[key] = value.strip()
    return options


def class_labels(name: str, count: int, wanted: str | None) -> tuple[str, tuple[str, ...] | None]:
    """(dataset, labels) of a model with ``count`` outputs; wanted: "imagenet" | "cifar10" | None (ImageNet's
    names for 1000 outputs, else "class i")."""
    if wanted == "cifar10":
        if count != 10:
            raise ParameterError(f"{name}: labels=cifar10 needs 10 outputs; the model has {count}")
        return "cifar10", None
    if wanted == "imagenet" or (wanted is None and count == 1000):
        if count != 1000:
            raise ParameterError(f"{name}: labels=imagenet needs 1000 outputs; the model has {count}")
        return "imagenet", None
    return f"{count} classes", tuple(f"class {i}" for i in range(count))
