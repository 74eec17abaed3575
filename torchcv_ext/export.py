"""Deployment: torch.export, ONNX and TorchScript for models built from the fused ops.

* ``torch.export.export(model.eval(), (x,))`` works as is. The graph calls the torchcv_ext ops
  (the fused kernels), so running it needs this package: ``ep.module()`` in Python,
  ``torch.compile``, or AOTInductor with the extension loaded.
* :func:`decompositions` maps every torchcv_ext op to its pure-PyTorch reference
  (torchcv_ext/ops/reference/), for ``ExportedProgram.run_decompositions``. The graph then holds
  only ATen ops, for runtimes that do not know ours (ONNX, ExecuTorch):

      ep = torch.export.export(model.eval(), (x,))
      ep = ep.run_decompositions(torchcv_ext.export.decompositions())

  For core ATen (ExecuTorch) merge it into ``torch.export.default_decompositions()``. The
  references compute in float32 (float64 for float64) like the kernels, so a half-precision
  graph upcasts around these ops.
* :func:`to_onnx`: ``torch.export`` -> :func:`decompositions` -> ``torch.onnx.export``, with a
  dynamic batch dimension by default. It needs the ``onnx`` and ``onnxscript`` packages; a plain
  ``torch.onnx.export(model, ...)`` stops at the first torchcv_ext op ("No ONNX function found").
* AOTInductor: ``torch._inductor.aoti_compile_and_package(ep)`` of the exported program (not
  decomposed) compiles a package whose code calls the fused ops through the dispatcher. Loading
  it needs only torch and this extension's shared library, not this Python package:
  ``torch.ops.load_library(torchcv_ext.export.library_path())`` (or dlopen it from C++), then
  ``torch._inductor.aoti_load_package(path)``.
* ``torch.jit.trace(model.eval(), x)`` works. The traced graph calls the fused ops and computes
  the BN folds from the module's parameters, so ``load_state_dict`` on the traced module takes
  effect: while a graph is captured, the modules cache nothing
  (``torchcv_ext.ops._common.capturing_graph``). ``torch.jit.script`` is not supported.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from torchcv_ext.ops import _common

__all__ = ["decompositions", "library_path", "to_onnx"]


def library_path() -> str:
    """Path of the compiled extension (``torchcv_ext/_C*.so``): what a deployment without this
    Python package loads (``torch.ops.load_library``) to run graphs that call the fused ops --
    AOTInductor packages, TorchScript traces. Its CPU and CUDA kernels register on load."""
    from torchcv_ext import _loader

    if _loader._C is None:
        raise RuntimeError(f"torchcv_ext: the compiled extension is not loaded: {_loader.LOAD_ERROR}")
    return _loader._C.__file__


def decompositions() -> Dict[Any, Callable]:
    """``{torch.ops.torchcv_ext.<op>.default: reference}`` for every op of the loaded extension
    (empty without it: the models then run the references, and the graph has no op of ours).
    The references check their arguments like the kernels and have the ops' signatures."""
    return {getattr(torch.ops.torchcv_ext, op).default: fn
            for op, fn in _common.REFERENCES.items() if _common.op_available(op)}


def to_onnx(model: torch.nn.Module, args: Union[torch.Tensor, Sequence[Any]],
            f: Optional[str] = None, *, dynamic_batch: bool = True, **onnx_kwargs: Any):
    """Export ``model`` to ONNX with the torchcv_ext ops replaced by their references.

    Args:
        model: put it in eval mode first, as for any inference export (a train-mode BatchNorm
            exports batch statistics).
        args: an example input tensor, or a tuple of positional inputs.
        f: path of the .onnx file to write, or None to only return the program.
        dynamic_batch: dimension 0 of every tensor input is dynamic (``torch.export.Dim``).
        onnx_kwargs: passed to ``torch.onnx.export`` (e.g. ``opset_version``,
            ``input_names``, ``output_names``, ``external_data``).

    Returns the ``torch.onnx.ONNXProgram`` (``.model_proto``, ``.save(path)``, and
    ``program(*inputs)`` runs it in onnxruntime when that is installed).
    """
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    ep = ep.run_decompositions(decompositions())
    return torch.onnx.export(ep, args, f, dynamo=True, **onnx_kwargs)
