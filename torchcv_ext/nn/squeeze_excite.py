"""Drop-in for torchvision's ``SqueezeExcitation`` backed by the fused op
(torchcv_ext/ops/squeeze_excite.py)."""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import nn

from torchcv_ext import activations
from torchcv_ext.activations import fused_name
from torchcv_ext.ops.squeeze_excite import squeeze_excite

__all__ = ["SqueezeExcite"]

ActivationArg = Union[str, Callable[..., nn.Module]]


def _make_activation(arg: ActivationArg, what: str) -> nn.Module:
    if isinstance(arg, str):
        return activations.make_module(activations.parse(arg, f"SqueezeExcite {what}"))
    if isinstance(arg, nn.Module):
        return arg
    if callable(arg):
        module = arg()
        if not isinstance(module, nn.Module):
            raise TypeError(f"SqueezeExcite: {what} must build an nn.Module, got {type(module)}")
        return module
    raise TypeError(f"SqueezeExcite: {what} must be a name or an nn.Module class, got {arg!r}")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation block, a drop-in for ``torchvision.ops.SqueezeExcitation``.

    Same constructor, submodules (``avgpool``, ``fc1``, ``fc2``, ``activation``,
    ``scale_activation``) and state_dict keys (``fc1.weight``, ``fc1.bias``, ``fc2.weight``,
    ``fc2.bias``), so torchvision checkpoints load unchanged. ``activation`` / ``scale_activation``
    take nn.Module classes (or factories such as ``functools.partial(nn.ReLU, inplace=True)``) or
    names ("relu", "silu", "hardswish", ... / "sigmoid", "hardsigmoid"). The forward is one fused
    op (pool + fc1 + act + fc2 + gate + multiply); an activation the op does not implement falls
    back to the eager composition.
    """

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: ActivationArg = nn.ReLU,
                 scale_activation: ActivationArg = nn.Sigmoid) -> None:
        super().__init__()
        if input_channels < 1 or squeeze_channels < 1:
            raise ValueError(f"SqueezeExcite: input_channels and squeeze_channels must be >= 1, got "
                             f"{input_channels} and {squeeze_channels}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = _make_activation(activation, "activation")
        self.scale_activation = _make_activation(scale_activation, "scale_activation")

    @classmethod
    def from_modules(cls, m: nn.Module) -> "SqueezeExcite":
        """Wrap an existing ``torchvision.ops.SqueezeExcitation`` (or any module with the same
        submodules): the new module shares its fc1/fc2 (same parameters) and activations."""
        for name in ("fc1", "fc2", "activation", "scale_activation"):
            if not hasattr(m, name):
                raise TypeError(f"SqueezeExcite.from_modules: {type(m).__name__} has no '{name}'")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.avgpool = getattr(m, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
        new.fc1 = m.fc1
        new.fc2 = m.fc2
        new.activation = m.activation
        new.scale_activation = m.scale_activation
        new.train(m.training)
        return new

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        s = self.activation(self.fc1(self.avgpool(x)))
        return self.scale_activation(self.fc2(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = fused_name(self.activation)
        gate = fused_name(self.scale_activation)
        if act is None or gate is None:
            return self._scale(x) * x
        return squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                              act, gate)

    def extra_repr(self) -> str:
        return f"fused={fused_name(self.activation) is not None and fused_name(self.scale_activation) is not None}"
