"""Several surrogate models as one (the SGA paper's ensemble setting): one δ fitted against all of them at once.

An :class:`Ensemble` looks like one :class:`~uap_core.models.spec.Classifier` to the rest of the core: its forward is
the mean of its members' logits (what evaluation measures: the ensemble's own prediction), and it is named by its
members joined with commas (``"vgg16,resnet50"``, the CLI's ``--model vgg16,resnet50``). The gradient methods see
its ``members``: their loss is the mean of each member's loss on the same perturbed batch, each against that
member's own clean prediction (see ``UAPAlgorithm.loss_and_fooled``). Members must share the dataset (the label
space) and the input size (one δ fits all).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import ParameterError
from .spec import Classifier, ModelSpec

SEPARATOR = ","


def member_names(name: str) -> list[str]:
    """"vgg16, resnet50" → ["vgg16", "resnet50"]; a single name → [name]."""
    return [part.strip() for part in name.split(SEPARATOR) if part.strip()]


def is_ensemble_name(name: str) -> bool:
    return len(member_names(name)) > 1


def ensemble_spec(specs: list[ModelSpec]) -> ModelSpec:
    """The spec of an ensemble of ``specs``: the shared dataset and input size; ParameterError otherwise."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ParameterError(f"an ensemble lists a model twice: {', '.join(names)}")
    if len({s.dataset for s in specs}) > 1:
        raise ParameterError(f"ensemble members must classify the same labels; {', '.join(names)} mix "
                             f"{', '.join(sorted({s.dataset for s in specs}))}")
    if len({s.input_size for s in specs}) > 1:
        sizes = ", ".join(f"{s.name} {s.input_size}px" for s in specs)
        raise ParameterError(f"ensemble members must take the same input size (one δ for all): {sizes}")
    first = specs[0]
    return replace(first, name=SEPARATOR.join(names), title="Ensemble: " + " + ".join(s.title for s in specs),
                   family="ensemble", package=None, weights_file=None)


class Ensemble(nn.Module):
    """Classifiers as one: forward(x) (N, 3, H, W) in [0, 1] → the mean of the members' logits (N, C)."""

    def __init__(self, members: list[Classifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ParameterError("an ensemble needs at least two models")
        self.members = nn.ModuleList(members)
        self.spec = ensemble_spec([m.spec for m in members])
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x).float() for member in self.members]).mean(0)

    @property
    def device(self) -> torch.device:
        return self.members[0].device


def members_of(model: nn.Module) -> list[nn.Module]:
    """The surrogates a loss is averaged over: an ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]
