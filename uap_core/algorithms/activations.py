"""Hidden activations of a classifier, collected with forward hooks: what the data-free objectives (FFF, GD-UAP,
TRM-UAP) and SV-UAP's hidden-layer Jacobian read.

    layers = conv_layers(model)                      # every nn.Conv2d, in the order the network registers them
    with ActivationRecorder(layers[:5]) as recorder:
        model(x)
    recorder.outputs                                 # [(n, C, H, W) tensors], one per call of a recorded layer
"""

from __future__ import annotations

from torch import nn
import torch


def conv_layers(model: nn.Module) -> list[nn.Module]:
    """Every ``nn.Conv2d`` of ``model`` in registration order (the forward order for sequential networks such as
    VGG, ResNet and EfficientNet)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


class ActivationRecorder:
    """Records the outputs of ``layers`` during the forwards run inside the ``with`` block (in call order);
    ``stop_after`` the last recorded layer raises :class:`StopForward` so the rest of the network is skipped when
    the caller only needs those activations (catch it with :meth:`run`)."""

    def __init__(self, layers: list[nn.Module], stop_after_last: bool = False) -> None:
        self.layers = list(layers)
        self.stop_after_last = stop_after_last
        self.outputs: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.outputs.append(output)
        if self.stop_after_last and module is self.layers[-1]:
            raise StopForward

    def run(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """Forward ``x`` (stopping early if asked) and return the recorded outputs of this forward."""
        self.outputs = []
        try:
            model(x)
        except StopForward:
            pass
        return self.outputs

    def __enter__(self) -> "ActivationRecorder":
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class StopForward(Exception):
    """Raised by a recorder's hook after the last layer it needs."""
