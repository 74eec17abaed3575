"""What every model in torchcv_ext.models shares for transfer learning: a ``features`` backbone,
a classifier head (``classifier``, ``fc`` or ``head``, named as torchvision / timm name it),
``reset_classifier(num_classes)`` and ``freeze_backbone()``."""
from __future__ import annotations

import copy
import itertools
from typing import Iterable, List, Optional

import torch
from torch import nn

from torchcv_ext.ops import _common


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
    """Base of the models: subclasses set ``head_name`` and provide ``features``.

    A call whose input the model cannot take -- wrong rank, wrong channel count, H or W under the
    smallest size the network accepts -- raises a ValueError saying so (``explain_bad_input``),
    chained to torch's error from the layer where it failed."""

    head_name = "classifier"

    def __call__(self, *args, **kwargs):
        # Bad input is explained on the error path (and for an empty image): the call itself is
        # untouched (a try costs nothing; graph capture -- compile, export, jit.trace -- skips even
        # that, and fx traces forward, not __call__), so no model declares sizes and no traced graph
        # holds a check.
        if _common.capturing_graph():
            return super().__call__(*args, **kwargs)
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 3 and 0 in x.shape[2:]:
            # An image of height or width 0: not every torch's layers reject it (torch 2.11's conv
            # on meta tensors returns an empty output), so it is named here.
            message = explain_bad_input(self, args, kwargs, ValueError("an image of height or width 0"))
            if message is not None:
                raise ValueError(message)
        try:
            return super().__call__(*args, **kwargs)
        except (RuntimeError, ValueError) as err:
            message = explain_bad_input(self, args, kwargs, err)
            if message is None:
                raise
            raise ValueError(message) from err

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


def model_label(model: nn.Module) -> str:
    """``VGG (vgg16_cifar)``: the class, and the registry name ``create_model`` built it under."""
    name = getattr(model, "registry_name", None)
    cls = type(model).__name__
    return f"{cls} ({name})" if isinstance(name, str) and name != cls else cls


def _first_conv(model: nn.Module) -> Optional[nn.Module]:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m
    return None


def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters and buffers are meta tensors (no data is
    copied) and whose modules carry no hooks."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in memo:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    twin = copy.deepcopy(model, memo)
    for m in twin.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
    return twin.eval()


def minimum_input_size(model: nn.Module, channels: int, spatial_dims: int = 2,
                       limit: int = 4096) -> Optional[int]:
    """The smallest S such that ``model`` runs on a (1, channels, S, ..., S) input: found by
    doubling then bisection over forwards on meta tensors (no compute). None when no S up to
    ``limit`` works (a model built for one input size only, such as a ViT)."""
    twin = _meta_twin(model)

    def runs(s: int) -> bool:
        try:
            with torch.no_grad():
                nn.Module.__call__(twin, torch.empty((1, channels) + (s,) * spatial_dims, device="meta"))
            return True
        except Exception:  # noqa: BLE001  (any failure: this size is not accepted)
            return False

    hi = 1
    while not runs(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2  # fails (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if runs(mid):
            hi = mid
        else:
            lo = mid
    return hi


def explain_bad_input(model: nn.Module, args: tuple, kwargs: dict, err: Exception) -> Optional[str]:
    """The message for an input ``model`` rejected with ``err``, in the user's terms -- the model,
    the input's shape and what it expects (rank, channels, smallest H and W) -- or None when the
    input is not the problem (or ``err`` already names the model): then ``err`` stands."""
    try:
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        conv = _first_conv(model)
        if not isinstance(x, torch.Tensor) or conv is None or str(err).startswith(type(model).__name__):
            return None
        who, shape = model_label(model), tuple(x.shape)
        rank, channels = conv.weight.dim(), conv.in_channels
        spatial = ("L",) if rank == 3 else ("H", "W") if rank == 4 else ("D", "H", "W")
        if x.dim() != rank:
            hint = "; add the batch dimension: x.unsqueeze(0)" if x.dim() == rank - 1 else ""
            return (f"{who}: expected a {rank}-D input (N, {channels}, {', '.join(spatial)}), got a {x.dim()}-D "
                    f"tensor of shape {shape}{hint}")
        if shape[1] != channels:
            return (f"{who}: expected {channels} input channels (the in_chans it was built with), "
                    f"got {shape[1]}: input of shape {shape}")
        smallest = minimum_input_size(model, channels, rank - 2)
        if smallest is not None and min(shape[2:]) < smallest:
            dims = " and ".join(spatial)
            return (f"{who}: input of shape {shape} is too small: {dims} must each be >= {smallest} "
                    f"(the smallest input it accepts is {(1, channels) + (smallest,) * (rank - 2)})")
        if smallest is None and isinstance(err, ValueError):
            return f"{who}: input of shape {shape}: {err}"
        return None
    except Exception:  # noqa: BLE001  (explaining must never hide the original error)
        return None


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
