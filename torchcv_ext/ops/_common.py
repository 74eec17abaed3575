"""Plumbing shared by every op module in torchcv_ext/ops: where an op's kernels come from, the
memory-format rule of the C++ kernels, and registration of the reference as a kernel."""
from __future__ import annotations

import functools
import operator
import types
from typing import Callable, Dict, Iterable, Tuple

import torch

from torchcv_ext import _loader

NAMESPACE = "torchcv_ext"

#: Run-time switches (exported as ``torchcv_ext.ops.config``).
#:   dwconv_cpu_train_backend: the CPU path of train-mode DWConvBNAct / dwconv_bn_act_train.
#:     "auto" (default): the C++ kernels for float32 inputs outside CPU autocast (vectorized train
#:     forward and backward: 1.0-3.0x eager on MobileNetV3 / EfficientNet-B0 layers, see
#:     benchmarks/bench_dwconv_bn_act.py), eager PyTorch otherwise (the float16 / bfloat16 /
#:     float64 train kernels are plain loops); "kernels": always the C++ kernels, which mirror
#:     the CUDA kernels' math (the tests run both); "eager": eager PyTorch -- the modules
#:     (Conv2d -> BatchNorm2d -> activation) in DWConvBNAct, the reference composition in the
#:     functional op. CUDA always uses the CUDA kernels.
#:   dwconv_cpu_eval_backend: eval-mode DWConvBNAct on the CPU (float32 inference, no autograd):
#:     "auto" (default): oneDNN's fused depthwise conv (BN folded, activation as a post-op) on
#:     small problems, where its JIT kernels are faster, the fused C++ kernel on large planes
#:     (torchcv_ext/nn/dwconv_bn_act.py: _cpu_eval_uses_onednn); "kernel": always the C++ kernel;
#:     "onednn": oneDNN whenever it applies. Either way one pass over x and y. The functional op
#:     ops.dwconv_bn_act always runs the C++ kernel.
#:   cpu_onednn_conv_bn: eval-mode Conv2d + BatchNorm2d (+ activation, + residual) on the CPU in
#:     float32 without autograd (torchcv_ext/nn/conv_bn.py): True (default) runs one oneDNN call
#:     with BN folded, weights pre-packed and the activation / residual add as post-ops; False runs
#:     F.conv2d with the folded BN, then the activation.
#:   cuda_attention_dq: how the CUDA fp16 / bf16 attention backward computes dQ: "separate"
#:     (default) a deterministic dQ pass of its own; "atomic": inside the dK/dV pass with float32
#:     atomics (FlashAttention-2 style, one pass fewer; ignored under
#:     torch.use_deterministic_algorithms). Read by ops/attention.py's backward, which passes it to
#:     the op (no kernel reads an environment variable). Opt-in until a GPU run shows it faster.
config = types.SimpleNamespace(dwconv_cpu_train_backend="auto", dwconv_cpu_eval_backend="auto",
                               cpu_onednn_conv_bn=True, cuda_attention_dq="separate")


def capturing_graph() -> bool:
    """A graph is being captured -- torch.compile / torch.export (``torch.compiler.is_compiling``)
    or ``torch.jit.trace``: the modules then compute everything they would otherwise cache (BN
    folds, pre-packed oneDNN weights) from their parameters in the call, so the captured graph
    reads the parameters (a later ``load_state_dict`` on the exported / traced module takes effect)
    and holds only ops a graph can carry."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def dwconv_cpu_train_uses_kernels(x: torch.Tensor) -> bool:
    """config.dwconv_cpu_train_backend for a CPU input ``x`` of a train-mode depthwise layer."""
    mode = config.dwconv_cpu_train_backend
    if mode not in ("auto", "kernels", "eager"):
        raise ValueError(f"config.dwconv_cpu_train_backend must be 'auto', 'kernels' or 'eager', got {mode!r}")
    if mode == "auto":
        return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    return mode == "kernels"


#: op name -> {"CPU": backend description, "CUDA": backend description}; filled at import.
BACKENDS: Dict[str, Dict[str, str]] = {}

#: op name -> its pure-PyTorch reference with the op's signature (registered as a kernel where no
#: compiled one exists; torchcv_ext.export.decompositions() hands them to graph exporters).
REFERENCES: Dict[str, Callable] = {}

# Kept alive for the life of the process: Python kernels registered into the C++-defined library.
_impl_lib = None


def ops_available() -> bool:
    """The op schemas exist in torch.ops.torchcv_ext (the compiled extension is loaded)."""
    return _loader.extension_loaded()


def _defined_ops() -> frozenset:
    if not ops_available():
        return frozenset()
    names = torch._C._dispatch_get_all_op_names()
    return frozenset(n.split("::", 1)[1].split(".")[0] for n in names if n.startswith(NAMESPACE + "::"))


#: Schemas the loaded extension defines (read once; a stale build may lack newer ops).
DEFINED_OPS = _defined_ops()


def op_available(op: str) -> bool:
    """The compiled extension is loaded and defines ``op``: the gate every public function and
    registration uses (monkeypatch ``ops_available`` to False to force the reference path)."""
    return ops_available() and op in DEFINED_OPS


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """Memory format the ops compute in and return (mirrors csrc/include/torchcv_ext/checks.h).

    channels_last for a 4-D tensor laid out channels-last (channels_last-contiguous but not
    NCHW-contiguous, or a channel slice of one: unit channel stride), NCHW-contiguous otherwise.
    """
    if x.dim() == 4 and not x.is_contiguous():
        if x.is_contiguous(memory_format=torch.channels_last) or (x.stride(1) == 1 and x.stride(3) != 1):
            return torch.channels_last
    return torch.contiguous_format


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key)


def register_reference_kernels(op: str, fn: Callable, keys: Iterable[str] = ("CPU", "CUDA")) -> None:
    """Register ``fn`` (the pure-PyTorch reference) as the kernel of ``op`` for every dispatch key
    in ``keys`` that has no C++/CUDA kernel, so all devices go through the same dispatcher path
    (autograd, fake, opcheck, torch.compile) and the same tests. Records the backend per key."""
    global _impl_lib
    REFERENCES[op] = fn
    backends = BACKENDS.setdefault(op, {})
    for key in keys:
        if has_kernel(op, key):
            backends[key] = "C++ kernel" if key == "CPU" else "CUDA kernel"
            continue
        if _impl_lib is None:
            _impl_lib = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901
        _impl_lib.impl(op, fn, key)
        backends[key] = "reference (PyTorch, via dispatcher)"


def check_same_device(op: str, names: Iterable[str], args: Iterable) -> None:
    """Every tensor among ``args`` (named ``names``; lists of tensors and None allowed) is on one
    device, else a RuntimeError naming the two arguments. The dispatcher would otherwise run the
    Meta kernel for a meta tensor mixed with CPU tensors and return a meta result."""
    first = None
    for name, a in zip(names, args):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if not isinstance(t, torch.Tensor):
                continue
            if first is None:
                first = (name, t.device)
            elif t.device != first[1]:
                raise RuntimeError(f"torchcv_ext.{op}: {name} is on {t.device} but {first[0]} is on "
                                   f"{first[1]}; all tensors must be on one device")


def register_fake(op: str) -> Callable:
    """``torch.library.register_fake`` for ``torchcv_ext::<op>`` with :func:`check_same_device`
    run first (argument names from the schema): the one device check of every op's fake / Meta
    kernel, which is what runs for meta tensors and under torch.compile."""
    names = [a.name for a in getattr(torch.ops.torchcv_ext, op).default._schema.arguments]

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            check_same_device(op, names, list(args) + [kwargs.get(n) for n in names[len(args):]])
            return fn(*args, **kwargs)

        torch.library.register_fake(f"{NAMESPACE}::{op}")(checked)
        return fn

    return deco


def int_tuple(op: str, name: str, value, n: int = 2) -> Tuple[int, ...]:
    """A size argument (stride, padding, dilation, kernel_size, groups, ...) as ``n`` Python ints:
    an int, or a sequence of 1 or ``n`` ints (torch.SymInt too). Anything else -- a string such as
    "12", a float, a bool -- is a TypeError naming the argument."""
    def as_int(v):
        if isinstance(v, (bool, str, bytes)) or isinstance(v, torch.Tensor) and v.is_floating_point():
            raise TypeError
        return v if isinstance(v, torch.SymInt) else operator.index(v)

    try:
        if isinstance(value, (list, tuple, torch.Size)):
            t = tuple(as_int(v) for v in value)
        else:
            t = (as_int(value),)
    except TypeError:
        want = "an int" if n == 1 else f"an int or a sequence of {n} ints"
        raise TypeError(f"torchcv_ext.{op}: {name} must be {want}, got {value!r} "
                        f"({type(value).__name__})") from None
    if len(t) == 1:
        t = t * n
    if len(t) != n:
        raise ValueError(f"torchcv_ext.{op}: {name} must be an int or a sequence of {n} ints, got "
                         f"{len(t)} values: {value!r}")
    return t


def check_sizes(owner: str, minimum: int = 1, **sizes) -> None:
    """Constructor sizes (channels, dims, kernel sizes, strides, ...; ints or tuples of ints) are
    ints >= ``minimum``: a ValueError naming the argument, not torch's "Trying to create tensor
    with negative dimension" from deep inside a layer."""
    for name, v in sizes.items():
        for i in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"{owner}: {name} must be an int, got {v!r} ({type(v).__name__})")
            if i < minimum:
                raise ValueError(f"{owner}: {name} must be >= {minimum}, got {v!r}")


def fresh(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A new tensor (never a view of an input, as custom ops require) in the kernels' memory format."""
    return out.clone(memory_format=memory_format_of(like))


class TensorState:
    """Which tensors a cached value was computed from, and their ``Tensor._version`` then: the
    value stays valid while :meth:`matches` the same slots (no tensor replaced, none modified in
    place; optimizer steps, ``load_state_dict`` and running-statistics updates bump the version).
    It holds the tensors, so a replaced one's memory cannot come back as a new tensor that looks
    the same. ``extra``: other values the cached one depends on (eps, inference mode, ...)."""

    __slots__ = ("tensors", "versions", "extra")

    def __init__(self, tensors, extra=()) -> None:
        self.tensors = tuple(tensors)
        self.versions = tuple(None if t is None else t._version for t in self.tensors)
        self.extra = tuple(extra)

    @staticmethod
    def cacheable(tensors) -> bool:
        """Inference tensors (made under ``torch.inference_mode``) have no version counter."""
        return not any(t is not None and t.is_inference() for t in tensors)

    def matches(self, tensors, extra=()) -> bool:
        tensors = tuple(tensors)
        return (len(tensors) == len(self.tensors) and tuple(extra) == self.extra
                and all(a is b for a, b in zip(tensors, self.tensors))
                and all(t is None or t._version == v for t, v in zip(tensors, self.versions)))


#: Activation names shared with csrc/include/torchcv_ext/activations.h (same order, same math).
ACTIVATIONS = ("identity", "relu", "relu6", "hardswish", "silu", "hardsigmoid", "sigmoid")


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return name


def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """Reference activation by name (eager PyTorch functions, so autograd matches nn modules)."""
    F = torch.nn.functional
    return {
        "identity": lambda t: t,
        "relu": F.relu,
        "relu6": F.relu6,
        "hardswish": F.hardswish,
        "silu": F.silu,
        "hardsigmoid": F.hardsigmoid,
        "sigmoid": torch.sigmoid,
    }[check_activation(name)](x)


def activation_derivative(name: str, x: torch.Tensor) -> torch.Tensor:
    """d act(x) / dx by name, the convention of csrc/include/torchcv_ext/activations.h
    (act_backward): PyTorch's autograd values at the kinks; relu' = 1 at NaN as in
    threshold_backward. Explicit formulas, no autograd, so the backward references trace into
    exported graphs."""
    check_activation(name)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    if name == "identity":
        return one
    if name == "relu":
        return torch.where(x <= 0, zero, one)
    if name == "relu6":
        return torch.where((x > 0) & (x < 6), one, zero)
    if name == "hardswish":
        return torch.where(x <= -3, zero, torch.where(x < 3, (2 * x + 3) / 6, one))
    if name == "hardsigmoid":
        return torch.where((x > -3) & (x < 3), one / 6, zero)
    s = torch.sigmoid(x)
    if name == "silu":
        return s * (1 + x * (1 - s))
    return s * (1 - s)  # sigmoid


def register_backward_autograd(op: str, differentiable: Callable) -> None:
    """Double backward for the backward op ``op`` (``_<name>_backward``): its own derivative is
    taken by autograd through ``differentiable``, a pure-PyTorch function of the op's arguments that
    computes the same outputs (the op's reference backward: explicit formulas, differentiable), so
    ``autograd.grad(..., create_graph=True)`` followed by a second grad -- gradient penalties,
    R1 regularisation, meta-learning -- gets exact second (and higher) derivatives instead of the
    kernels' outputs being treated as constants. Only runs when a second derivative is asked for;
    first-order backward passes call the kernels as before."""

    def setup(ctx, inputs, output):
        ctx.n = len(inputs)
        ctx.tensor_pos = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_pos))
        ctx.args = [None if isinstance(a, torch.Tensor) else a for a in inputs]

    def backward(ctx, *grads):
        args = list(ctx.args)
        wrt = [i for i in ctx.tensor_pos if ctx.needs_input_grad[i]]
        with torch.enable_grad():
            # A fresh alias per input: the gradient reaching it is the partial derivative only (an
            # input computed from another one, like z from x, is not counted twice), and the
            # result stays connected to the outer graph for derivatives of higher order.
            for i, t in zip(ctx.tensor_pos, ctx.saved_tensors):
                args[i] = t.view_as(t) if i in wrt else t
            outs = differentiable(*args)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            pairs = [(o, g) for o, g in zip(outs, grads)
                     if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
            res = [None] * ctx.n
            if pairs and wrt:
                got = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wrt],
                                          [g.to(o.dtype) for o, g in pairs], allow_unused=True,
                                          create_graph=torch.is_grad_enabled())
                for i, g in zip(wrt, got):
                    res[i] = g if g is None else g.to(args[i].dtype)
        return tuple(res)

    torch.library.register_autograd(f"{NAMESPACE}::{op}", backward, setup_context=setup)
