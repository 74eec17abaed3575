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
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"create_model: unknown model {name!r}{hint}. "
                         "torchcv_ext.models.list_models() lists them all")
    return _MODELS[name]


def create_model(name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier.

    ``pretrained=True`` is an error: torchcv_ext ships and downloads no weights. Load a
    torchvision ``state_dict`` instead (``model.load_state_dict(tv_model.state_dict())``).
    """
    fn = model_entrypoint(name)
    if pretrained:
        raise ValueError(
            f"create_model({name!r}, pretrained=True): torchcv_ext has no weight downloads. "
            "Build the torchvision model with its weights and load its state_dict into this "
            "model (same parameter names), or convert it in place with torchcv_ext.convert(model).")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"create_model: num_classes must be a positive int, got {num_classes!r}")
    return fn(num_classes=num_classes, **kwargs)
