"""Plumbing shared by every op module in torchcv_ext/ops: where an op's kernels come from, the
memory-format rule of the C++ kernels, and registration of the reference as a kernel."""
from __future__ import annotations

import functools
import operator
import types
import dataclasses
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from torchcv_ext import _loader

NAMESPACE = "torchcv_ext"

#: Run-time switches (exported as ``torchcv_ext.ops.config``).
#:   dwconv_cpu_train_backend: the CPU path of train-mode DWConvBNAct / dwconv_bn_act_train.
#:     "auto" (default): the C++ kernels for float32 inputs outside CPU autocast on a CPU with
#:     AVX2 + FMA or AVX-512 (vectorized train forward and backward: 1.0-3.0x eager with AVX-512,
#:     1.05-7.6x on an AVX2 AMD EPYC, on MobileNetV3 / EfficientNet-B0 layers:
#:     benchmarks/bench_dwconv_bn_act.py, benchmarks/results/2026-12-07-cpu-avx2-dwconv.md), eager
#:     PyTorch otherwise (the float16 / bfloat16 / float64 train kernels are plain loops, and
#:     other CPUs are unmeasured); "kernels": always the C++ kernels, which mirror the CUDA
#:     kernels' math (the tests run both); "eager": eager PyTorch -- the modules (Conv2d ->
#:     BatchNorm2d -> activation) in DWConvBNAct, the reference composition in the functional op.
#:     CUDA always uses the CUDA kernels.
#:   dwconv_cpu_eval_backend: eval-mode DWConvBNAct on the CPU (float32 inference, no autograd):
#:     "auto" (default): channels_last inputs run oneDNN's fused depthwise conv (BN folded,
#:     activation as a post-op), whose JIT kernels are faster there (with AVX-512: inputs up to
#:     16 MiB; larger ones the fused C++ kernel); NCHW inputs run the fused C++ kernel on a CPU
#:     with AVX2 + FMA or AVX-512 (1.1-2.1x eager on AVX2) and torch's own modules elsewhere
#:     (torchcv_ext/ops/dwconv_bn_act.py: backend); "kernel": always the C++ kernel;
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


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001  (a torch without the query)
        return "DEFAULT"


#: torch's own CPU dispatch level ("AVX512", "AVX2", "DEFAULT", ...), read once at import. The
#: float32 C++ depthwise kernels have versions for AVX-512 (16-float vectors) and AVX2 + FMA
#: (8-float vectors; csrc/include/torchcv_ext/cpu_clones.h: TCV_CPU_VERSIONS), measured faster
#: than eager on both; the "auto" backends take them there only (ops/dwconv_bn_act.py: backend).
CPU_CAPABILITY: str = _cpu_capability()
CPU_AVX512: bool = CPU_CAPABILITY.startswith("AVX512")
#: AVX2 + FMA or better (torch's "AVX2" level requires both).
CPU_AVX2: bool = CPU_AVX512 or CPU_CAPABILITY == "AVX2"


def capturing_graph() -> bool:
    """A graph is being captured -- torch.compile / torch.export (``torch.compiler.is_compiling``)
    or ``torch.jit.trace``: the modules then compute everything they would otherwise cache (BN
    folds, pre-packed oneDNN weights) from their parameters in the call, so the captured graph
    reads the parameters (a later ``load_state_dict`` on the exported / traced module takes effect)
    and holds only ops a graph can carry.

    ``torch._C._is_tracing`` is what ``torch.jit.is_tracing`` returns outside TorchScript, without
    its Python layers: every eager call of a module pays this check, and Python code between two
    multi-threaded kernels runs several times slower than in a micro-benchmark (right after a
    kernel, ``torch.jit.is_tracing()`` measured 8 us, 3% of a 250 us hardswish)."""
    return torch.compiler.is_compiling() or torch._C._is_tracing()


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """``x`` is a CPU tensor in an eager call that autograd does not record and no graph captures:
    where an op whose CPU kernel would be ATen's own (channel_shuffle, the elementwise activations)
    calls ATen directly, skipping the custom op's dispatch and Python autograd layers (5-15 us a
    call). Autograd and graph capture (compile, export, jit.trace) always take the op."""
    return x.is_cpu and not (x.requires_grad and torch.is_grad_enabled()) and not capturing_graph()


#: op name -> {"CPU": backend description, "CUDA": backend description}; filled at import.
BACKENDS: Dict[str, Dict[str, str]] = {}

#: op name -> its pure-PyTorch reference with the op's signature (registered as a kernel where no
#: compiled one exists; torchcv_ext.export.decompositions() hands them to graph exporters).
REFERENCES: Dict[str, Callable] = {}

# Kept alive for the life of the process: every Python kernel torchcv_ext registers into the
# C++-defined library (references, autocast) goes through this one Library object.
_impl_lib = None


def _lib() -> torch.library.Library:
    global _impl_lib
    if _impl_lib is None:
        _impl_lib = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901
    return _impl_lib


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
    REFERENCES[op] = fn
    backends = BACKENDS.setdefault(op, {})
    for key in keys:
        if has_kernel(op, key):
            backends[key] = "C++ kernel" if key == "CPU" else "CUDA kernel"
            continue
        _lib().impl(op, fn, key)
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


# ----------------------------------------------------------------------------------------------
# One declaration per op: OpSpec, and register() that does every registration from it.
# ----------------------------------------------------------------------------------------------
#: An autocast rule: (device_type, the op's arguments) -> the arguments to run the op with.
AutocastRule = Callable[[str, List], List]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """Everything Python registers for one schema of csrc/registration.cpp (forward or backward op).

    name: the schema's name in torch.ops.torchcv_ext.
    reference: the pure-PyTorch kernel with the op's signature, registered for each device whose
        compiled kernel is missing (CUDA in a CPU-only build), so every device takes the same
        dispatcher path; torchcv_ext.export hands it to exporters as the op's decomposition.
    fake: the fake / Meta kernel (output shapes, dtypes, strides); the device check of every
        tensor argument runs before it (:func:`register_fake`).
    backward, setup_context: the op's autograd formula (``torch.library.register_autograd``).
    differentiable: for a backward op instead: a pure-PyTorch function of its arguments computing
        the same outputs, whose autograd gives the exact double backward
        (:func:`register_backward_autograd`).
    autocast: the op's autocast rule (:func:`autocast_to`, :func:`autocast_like`), run on every
        device with autocast before the op itself with autocast excluded.
    """

    name: str
    reference: Callable
    fake: Callable
    backward: Optional[Callable] = None
    setup_context: Optional[Callable] = None
    differentiable: Optional[Callable] = None
    autocast: Optional[AutocastRule] = None


def register(*specs: OpSpec) -> None:
    """Every registration of each op in ``specs``: reference kernels, fake kernel, autograd (or the
    double backward of a backward op), autocast, and the op's eager caller (:data:`OPS`). Call it
    once per op module, when the compiled extension defines the schemas (:func:`op_available`)."""
    for spec in specs:
        OPS._callers[spec.name] = _eager_caller(spec)
        register_reference_kernels(spec.name, spec.reference)
        register_fake(spec.name)(spec.fake)
        if spec.backward is not None:
            torch.library.register_autograd(f"{NAMESPACE}::{spec.name}", spec.backward,
                                            setup_context=spec.setup_context)
        elif spec.differentiable is not None:
            register_backward_autograd(spec.name, spec.differentiable)
        if spec.autocast is not None:
            _register_autocast(spec.name, spec.autocast)


_below_autograd = torch._C._AutoDispatchBelowAutograd
_forward_ad = torch.autograd.forward_ad


def _eager_caller(spec: OpSpec) -> Callable:
    """``torch.ops.torchcv_ext.<spec.name>`` for eager calls, without the per-call Python layers of
    torch.library's autograd kernel (its generated autograd.Function, ``fill_defaults``, a Python
    redispatch even when nothing needs a gradient: 100-400 us a call right after a multi-threaded
    kernel on a 2-vCPU machine, as much as a small layer's kernels, benchmarks/results/
    2026-12-07-cpu-eager-caller.md):

    * nothing needs a gradient (grad mode off, as in every first-order backward, or no input
      requires grad): the kernel below autograd, as torch.library's own no-grad path does (autocast
      still applies: its kernels run before autograd's);
    * otherwise a plain autograd.Function made of the same ``setup_context`` and ``backward`` that
      torch.library registered (one formula, two callers), outside autocast and functorch.

    Graph capture (compile, export, jit.trace), autocast with autograd, and calls that leave
    defaulted arguments out take the op itself. Forward-mode AD (a dual tensor among the arguments,
    ``torch.autograd.forward_ad``) and torch.func transforms (grad, vmap, jvp, ...) take the op's
    pure-PyTorch reference, whose ATen ops carry tangents and batching rules: the op has no forward
    derivative (it would drop the tangents silently), and torch.library's autograd.Function has no
    ``setup_context`` for functorch (an error)."""
    op = getattr(torch.ops.torchcv_ext, spec.name).default
    reference = spec.reference
    n_args = len(op._schema.arguments)
    function = None
    if spec.backward is not None:
        setup = spec.setup_context

        # forward(ctx, *args) calling setup_context itself: a separate setup_context staticmethod
        # makes Function.apply bind the arguments by inspect.signature on every call (~200 us).
        def forward(ctx, *args):
            with _below_autograd():
                out = op(*args)
            setup(ctx, args, out)
            return out

        function = type(f"{spec.name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(spec.backward)})

    def call(*args):
        if torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0 and any(
                isinstance(a, torch.Tensor) and _forward_ad.unpack_dual(a).tangent is not None for a in args):
            return reference(*args)
        if len(args) != n_args or capturing_graph():
            return op(*args)
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            if function is None or torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
                return op(*args)
            return function.apply(*args)
        with _below_autograd():
            return op(*args)

    call.__name__ = call.__qualname__ = spec.name
    return call


class _EagerOps:
    """``OPS.<name>(*args)``: what ``torch.ops.torchcv_ext.<name>(*args)`` computes, through the
    op's eager caller where :func:`register` made one (:func:`_eager_caller`), the op otherwise.
    The functional ops and the autograd formulas in torchcv_ext/ops call their ops through it."""

    def __init__(self) -> None:
        self._callers: Dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("__"):
            raise AttributeError(name)
        caller = self._callers.get(name)
        return caller if caller is not None else getattr(torch.ops.torchcv_ext, name)


#: The ops for eager calls (:class:`_EagerOps`).
OPS = _EagerOps()


def autocast_to(positions: Sequence[int]) -> AutocastRule:
    """The rule of convolutions and matmuls (SDPA's too): the floating tensors at ``positions`` on
    the autocast device go to the autocast dtype (float16 / bfloat16); float64 stays; the other
    arguments (BatchNorm's per-channel vectors, kept in float32 as BatchNorm keeps them) as given."""
    def rule(device_type: str, args: List) -> List:
        dt = torch.get_autocast_dtype(device_type)
        for i in positions:
            t = args[i]
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                    and t.device.type == device_type):
                args[i] = t.to(dt)
        return args

    return rule


def autocast_like(source: int, positions: Sequence[int]) -> AutocastRule:
    """The rule of an op whose output keeps its input's dtype under autocast (SE: eager runs the
    1x1 convs in the autocast dtype and multiplies in x's): the floating tensors at ``positions``
    go to the dtype of the tensor at ``source``."""
    def rule(device_type: str, args: List) -> List:
        dt = args[source].dtype
        if args[source].is_floating_point():
            for i in positions:
                t = args[i]
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    args[i] = t.to(dt)
        return args

    return rule


def _register_autocast(name: str, rule: AutocastRule) -> None:
    """``rule`` as the op's Autocast<Device> kernel for the CPU and CUDA, in the C++ dispatcher
    (eager) and the Python dispatcher (torch.compile): cast the arguments, then run the op with
    that autocast key excluded."""
    op = getattr(torch.ops.torchcv_ext, name).default
    for device_type in ("cpu", "cuda"):
        if not torch._C._is_autocast_available(device_type):
            continue
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def kernel(*args, key=key, device_type=device_type):
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return op(*rule(device_type, list(args)))

        op.py_kernels.pop(key, None)
        op.py_impl(key)(kernel)
        _lib().impl(name, lambda _ks, *args, kernel=kernel: kernel(*args), key_name, with_keyset=True)
