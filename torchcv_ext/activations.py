"""The one registry of the activations the fused ops compute.

Every user of an activation takes it from here: the ops (their names are the schemas' ``str act``
values, checked here before any kernel runs, and their pure-PyTorch references use ``forward`` and
``derivative``), the modules (``DWConvBNAct``, ``SqueezeExcite``, ``FusedSequential``), the blocks
(``get_activation("gelu")``), and ``convert()`` (which recognizes the module, the function and the
Tensor method). The C++ side (csrc/include/torchcv_ext/activations.h) lists the same names.

To add an activation: its ``Activation(...)`` entry below, and its line and math in
csrc/include/torchcv_ext/activations.h. Nothing else changes: the tests run every entry.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Activation", "REGISTRY", "NAMES", "get", "check", "forward", "derivative", "fused_name",
           "call_name", "make_module", "parse", "drop_in"]


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation of the fused ops.

    name: the ops' name (``str act`` in the schemas, the C++ ``Act`` of the same name).
    module: the torch.nn class it computes; ``module_kwargs``: the constructor arguments that
        select it (``nn.GELU(approximate="tanh")``), which must match for a module to be fused.
    fn(x): the eager computation, out of place: torch's own binding where it has one
        (``torch._C._nn.hardswish``, what ``F.hardswish`` calls after its Python layer), because
        the ops' CPU inference path calls it between two kernels, where every Python frame costs
        several microseconds. ``fn_``: the in-place one, None where torch has none.
        ``forward(x, inplace)`` picks between them (the references and unfused paths call it).
    derivative(x): d act / dx by explicit formulas (no autograd, so the backward references trace
        into exported graphs), with PyTorch's values at the kinks.
    functions / methods: how a forward spells it as a call (``F.relu``, ``torch.sigmoid``) or a
        Tensor method (``"relu_"``): what convert() recognizes in a traced graph.
    onednn: oneDNN's post-op (name, scalars, algorithm) for the CPU conv + BN path, None if none.
    aliases: other names accepted where a name is given (``"swish"`` for ``"silu"``).
    """

    name: str
    module: type
    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    fn_: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    module_kwargs: Mapping[str, object] = dataclasses.field(default_factory=dict)
    functions: Tuple[Callable, ...] = ()
    methods: Tuple[str, ...] = ()
    onednn: Optional[Tuple[str, list, str]] = None
    aliases: Tuple[str, ...] = ()

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        return self.fn_(x) if inplace and self.fn_ is not None else self.fn(x)


def _where(cond, a, b):
    return torch.where(cond, a, b)


def _relu_d(x):
    return _where(x <= 0, torch.zeros_like(x), torch.ones_like(x))


def _relu6_d(x):
    return _where((x > 0) & (x < 6), torch.ones_like(x), torch.zeros_like(x))


def _hardswish_d(x):
    return _where(x <= -3, torch.zeros_like(x), _where(x < 3, (2 * x + 3) / 6, torch.ones_like(x)))


def _hardsigmoid_d(x):
    return _where((x > -3) & (x < 3), torch.full_like(x, 1 / 6), torch.zeros_like(x))


def _silu_d(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _sigmoid_d(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _gelu_d(x):  # Phi(x) + x phi(x), as PyTorch's gelu_backward
    cdf = 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2))))
    return cdf + x * torch.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))


def _gelu_tanh_d(x):  # PyTorch's gelu_backward, approximate="tanh"
    beta, kappa = math.sqrt(2 / math.pi), 0.044715
    t = torch.tanh(beta * (x + kappa * x * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * beta * (1 + 3 * kappa * x * x)


_nn = torch._C._nn  # torch's bindings of the activations (F.* without their Python layer)

REGISTRY: Dict[str, Activation] = {a.name: a for a in (
    Activation("identity", nn.Identity, lambda x: x, torch.ones_like,
               onednn=("none", [], ""), aliases=("none",)),
    Activation("relu", nn.ReLU, torch.relu, _relu_d, fn_=torch.relu_, functions=(F.relu, torch.relu, torch.relu_),
               methods=("relu", "relu_"), onednn=("relu", [], "")),
    Activation("relu6", nn.ReLU6, _nn.relu6, _relu6_d, fn_=_nn.relu6_, functions=(F.relu6,),
               onednn=("hardtanh", [0.0, 6.0], "")),
    Activation("hardswish", nn.Hardswish, _nn.hardswish, _hardswish_d, fn_=_nn.hardswish_, functions=(F.hardswish,),
               onednn=("hardswish", [], "")),
    Activation("silu", nn.SiLU, _nn.silu, _silu_d, fn_=_nn.silu_, functions=(F.silu,), onednn=("swish", [], ""),
               aliases=("swish",)),
    Activation("hardsigmoid", nn.Hardsigmoid, _nn.hardsigmoid, _hardsigmoid_d, fn_=_nn.hardsigmoid_,
               functions=(F.hardsigmoid,), onednn=("hardsigmoid", [], "")),
    Activation("sigmoid", nn.Sigmoid, torch.sigmoid, _sigmoid_d, fn_=torch.sigmoid_,
               functions=(torch.sigmoid, F.sigmoid), methods=("sigmoid", "sigmoid_"),
               onednn=("sigmoid", [], "")),
    Activation("gelu", nn.GELU, _nn.gelu, _gelu_d,
               module_kwargs={"approximate": "none"}, onednn=("gelu", [], "none")),
    Activation("gelu_tanh", nn.GELU, functools.partial(_nn.gelu, approximate="tanh"), _gelu_tanh_d,
               module_kwargs={"approximate": "tanh"}, onednn=("gelu", [], "tanh")),
)}

#: The registered names, in registry order.
NAMES: Tuple[str, ...] = tuple(REGISTRY)

_ALIASES = {alias: a.name for a in REGISTRY.values() for alias in (a.name, *a.aliases)}
_CALLS = {fn: a.name for a in REGISTRY.values() for fn in a.functions}
_METHODS = {m: a.name for a in REGISTRY.values() for m in a.methods}
# nn class -> the activations it computes (several when their module_kwargs differ: GELU's forms).
_BY_MODULE: Dict[type, Tuple[Activation, ...]] = {}
for _a in REGISTRY.values():
    _BY_MODULE[_a.module] = _BY_MODULE.get(_a.module, ()) + (_a,)
del _a


def check(name: str) -> str:
    """``name`` if it is a registered name (exactly, as the ops take it), else a ValueError."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(NAMES)}")
    return name


def get(name: str) -> Activation:
    return REGISTRY[check(name)]


def parse(name: str, owner: str) -> str:
    """A user-given name (case-insensitive; aliases such as "none" and "swish" allowed) as the
    registered name; ``owner`` names the caller in the error."""
    key = _ALIASES.get(name.lower()) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"{owner}: unknown activation {name!r}; expected one of {', '.join(NAMES)}, "
                         "or an nn.Module class")
    return key


def forward(name: str, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The eager computation of ``name`` on ``x`` (in place if asked, where that exists; only when
    autograd does not need ``x``)."""
    return get(name).forward(x, inplace)


def derivative(name: str, x: torch.Tensor) -> torch.Tensor:
    """d act(x) / dx, the convention of activations.h (act_backward)."""
    return get(name).derivative(x)


def fused_name(module_or_cls) -> Optional[str]:
    """The registered name of an activation module (or class), None when the fused ops cannot
    compute it. Exact classes only (a user subclass may change the math), with the constructor
    arguments of ``module_kwargs`` (a class alone matches its defaults); torchcv_ext's own drop-ins
    are registered with :func:`drop_in`."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    own = _DROP_INS.get(cls)
    if own is not None:
        return own
    # One dict lookup: the modules' forwards call this on every call (SqueezeExcite twice).
    for a in _BY_MODULE.get(cls, ()):
        if isinstance(module_or_cls, type):
            return a.name if _defaults_match(a) else None
        if all(getattr(module_or_cls, k, None) == v for k, v in a.module_kwargs.items()):
            return a.name
    return None


#: torchcv_ext's own modules computing a registered activation (nn.Hardswish's drop-in, ...): class ->
#: name. A dict (not a class attribute read through ``cls.__dict__``), so torch.compile traces it.
_DROP_INS: Dict[type, str] = {}


def drop_in(name: str):
    """Class decorator: the module computes the registered activation ``name`` (exactly that class;
    subclasses may change the math)."""
    check(name)

    def deco(cls):
        _DROP_INS[cls] = name
        return cls

    return deco


def _defaults_match(a: Activation) -> bool:
    import inspect

    params = inspect.signature(a.module.__init__).parameters
    return all(k in params and params[k].default == v for k, v in a.module_kwargs.items())


def call_name(op: str, target, args: tuple = (), kwargs: Optional[Mapping] = None) -> Optional[str]:
    """The registered name of an activation *call* in a torch.fx graph: ``op`` is the node kind
    ("call_function" with a function target such as ``F.relu``, "call_method" with a Tensor method
    name such as ``"sigmoid"``), ``args`` / ``kwargs`` the node's (they choose GELU's form); None
    when it is none of the registered activations."""
    if op == "call_function" and target is F.gelu:
        approximate = (kwargs or {}).get("approximate", args[1] if len(args) > 1 else "none")
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)
    if op == "call_function":
        return _CALLS.get(target)
    if op == "call_method":
        return _METHODS.get(target)
    return None


def make_module(name: str, inplace: bool = False) -> nn.Module:
    """A fresh module computing ``name`` (torchvision's convention: ``inplace`` where the class
    takes it)."""
    a = get(name)
    kwargs = dict(a.module_kwargs)
    if inplace and a.module not in (nn.Identity, nn.Sigmoid, nn.GELU):
        kwargs["inplace"] = True
    return a.module(**kwargs)
