"""Model registry: ``@register_model`` on a builder, ``list_models()``, ``create_model(name, ...)``.

Builders take ``num_classes`` and model-specific keyword arguments and return an ``nn.Module``.
No weights are downloaded here: to start from torchvision's pretrained weights, build the
torchvision model with its own weights and load its ``state_dict()`` into ours (the parameter
names are the same), or call ``torchcv_ext.convert(model)`` on the torchvision model.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, List, Optional

from torch import nn

__all__ = ["register_model", "list_models", "create_model", "is_model", "model_entrypoint"]

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
#: model name -> family (the torchcv_ext.models submodule that defines it).
_FAMILY: Dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (``resnet50``, ``mobilenet_v3_large``, ...)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style ``pattern``
    (``list_models("resnet*")``)."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_model(name: str) -> bool:
    return name in _MODELS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a model name (str), got {type(name).__name__} {name!r}; "
                        "torchcv_ext.models.list_models() lists them")
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"create_model: unknown model {name!r}{hint}. "
                         "torchcv_ext.models.list_models() lists them all")
    return _MODELS[name]


def _check_positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"create_model: {what} must be a positive int, got {value!r}")


def create_model(name: str, num_classes: Optional[int] = None, pretrained: bool = False,
                 in_chans: Optional[int] = None, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    ``num_classes``: size of the classifier; None (the default) keeps the builder's own default
    (1000 for the ImageNet networks, 10 for LeNet and the ``*_cifar`` networks, 16 for HybridSN).
    ``in_chans``: input channels (1 for MNIST, 3 for RGB); None keeps the builder's default (3;
    for HybridSN, whose input is a band cube, ``in_chans`` is its number of spectral bands,
    ``in_bands``). Other keyword arguments go to the builder.

    ``pretrained=True`` is an error: torchcv_ext ships and downloads no weights. Load a
    torchvision ``state_dict`` instead (``model.load_state_dict(tv_model.state_dict())``).
    """
    fn = model_entrypoint(name)
    if pretrained:
        raise ValueError(
            f"create_model({name!r}, pretrained=True): torchcv_ext has no weight downloads. "
            "Build the torchvision model with its weights and load its state_dict into this "
            "model (same parameter names), or convert it in place with torchcv_ext.convert(model).")
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None:
            _check_positive_int(value, key)
            kwargs[key] = value
    model = fn(**kwargs)
    if isinstance(model, nn.Module) and not hasattr(model, "registry_name"):
        model.registry_name = name  # error messages name the model as the user built it
    return model
