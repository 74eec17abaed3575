"""What every model in torchcv_ext.models shares for transfer learning: a ``features`` backbone,
a classifier head (``classifier``, ``fc`` or ``head``, named as torchvision / timm name it),
``reset_classifier(num_classes)`` and ``freeze_backbone()``."""
from __future__ import annotations

from typing import Iterable, List

import torch
from torch import nn


def last_linear_name(head: nn.Module) -> str:
    """Qualified name (within ``head``) of the last ``nn.Linear`` of a head: "" when ``head`` is
    that Linear."""
    last = None
    for name, m in head.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"reset_classifier: no nn.Linear in the head {type(head).__name__}")
    return last


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
        return self.get_submodule(self.classifier_layer_names()[0]).out_features

    def classifier_layer_names(self) -> List[str]:
        """Qualified names of the layers ``reset_classifier`` replaces and ``freeze_backbone``
        leaves trainable: the head's last ``nn.Linear`` (``classifier.6`` in VGG, ``fc`` in ResNet),
        first; models with auxiliary heads add those heads' last Linear."""
        inner = last_linear_name(self.get_classifier())
        return [f"{self.head_name}.{inner}" if inner else self.head_name]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier layers by freshly initialised ``num_classes``-way Linears."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"reset_classifier: num_classes must be >= 1, got {num_classes!r}")
        for name in self.classifier_layer_names():
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            old = getattr(parent, child)
            setattr(parent, child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(
                device=old.weight.device, dtype=old.weight.dtype))

    def backbone_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters of ``features``."""
        return self.features.parameters()

    def freeze_backbone(self, freeze: bool = True) -> None:
        """Train only the classifier layers (``classifier_layer_names()``, the layers
        ``reset_classifier`` replaces): every other parameter gets ``requires_grad=False``
        (VGG16 with a 2-class head: 4096 * 2 + 2 = 8,194 trainable parameters).
        ``freeze=False`` makes every parameter trainable again.

        Only gradients are switched off: BatchNorm layers keep their mode, so in train mode the
        frozen ones still update their running statistics (as in torchvision's and timm's
        fine-tuning examples). To freeze those too, put them in eval mode after each
        ``model.train()``, e.g. ``model.features.eval()`` (what ``torchcv_ext.train`` does)."""
        keep = {id(p) for name in self.classifier_layer_names() for p in self.get_submodule(name).parameters()}
        for p in self.parameters():
            p.requires_grad_(not freeze or id(p) in keep)


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
