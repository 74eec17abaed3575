"""What every model in torchcv_ext.models shares for transfer learning: a ``features`` backbone,
a classifier head (``classifier``, ``fc`` or ``head``, named as torchvision / timm name it),
``reset_classifier(num_classes)`` and ``freeze_backbone()``."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def replace_linear(head: nn.Module, num_classes: int) -> nn.Module:
    """``head`` with its last ``nn.Linear`` replaced by a fresh one with ``num_classes`` outputs
    (``head`` itself when it is that Linear)."""
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes, bias=head.bias is not None).to(head.weight.device)
    last = None
    for name, m in head.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"reset_classifier: no nn.Linear in the head {type(head).__name__}")
    parent_name, _, child = last.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    setattr(parent, child, replace_linear(getattr(parent, child), num_classes))
    return head


class FeatureView(nn.Sequential):
    """A backbone view over a model's own modules, for models whose torchvision layout has no
    ``features`` attribute (ResNet, ShuffleNetV2, GoogLeNet): built on access, never registered
    on the model, so the model's state_dict keeps torchvision's names. Parameters are shared."""


class ClassifierModel(nn.Module):
    """Base of the models: subclasses set ``head_name`` and provide ``features``."""

    head_name = "classifier"

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    @property
    def num_classes(self) -> int:
        head = self.get_classifier()
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear of the head by a freshly initialised ``num_classes``-way one."""
        if num_classes < 1:
            raise ValueError(f"reset_classifier: num_classes must be >= 1, got {num_classes}")
        setattr(self, self.head_name, replace_linear(self.get_classifier(), num_classes))

    def backbone_parameters(self) -> Iterable[nn.Parameter]:
        return self.features.parameters()

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Stop (or restart) gradients to the ``features`` backbone; the head stays trainable.
        The backbone's BatchNorm layers keep updating their running statistics in train mode
        unless the caller puts ``model.features`` in eval mode."""
        for p in self.backbone_parameters():
            p.requires_grad_(not freeze)


def init_weights_(model: nn.Module, linear_std: float = 0.01) -> None:
    """Kaiming-normal convs (fan_out), unit BN, small-normal Linear, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def flatten_pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
