"""Synchronized BatchNorm for the fused modules, on the CPU (gloo) as well as on CUDA.

``convert_sync_batchnorm(model)`` does what ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
does, for every ``BatchNorm1d/2d/3d`` of the model -- those inside ``DWConvBNAct``,
``FusedSequential`` and the blocks included -- but keeps their classes: each becomes a
``SyncBatchNorm1d/2d/3d``, a subclass of the BatchNorm it replaces sharing its parameters and
buffers (state_dict keys unchanged; ``isinstance(m, nn.BatchNorm2d)`` still holds, so the fused
modules, ``freeze_backbone`` and weight init treat it as before).

In training mode with a process group of more than one process, it normalizes with the mean and
variance of the global batch, as torch's SyncBatchNorm does: each rank all-gathers every rank's
per-channel count, mean and sum of squared deviations (combined with Chan's parallel formula, in
float64, so uneven per-rank batches -- even empty ones -- are exact and every rank computes
bitwise the same statistics and running statistics, updated with the global count's unbiased
variance); the backward all-reduces the per-channel gradient sums ``sum(dy)`` and
``sum(dy * (x - mean))``. ``weight`` / ``bias`` gradients stay local (DDP averages them).

CUDA tensors run torch's own SyncBatchNorm function (``torch.nn.modules._functions``, what
``nn.SyncBatchNorm`` runs): its fused CUDA kernels make fewer passes over the activations than
the composite ops below. Every other device -- the CPU, which torch's refuses -- runs
``_SyncBatchNormFunction``. In eval mode, and in training without a process group of more than
one, the layer is exactly its BatchNorm class, and the fused modules keep their fused kernels.

In training across processes, the fused train kernels (which compute one process's statistics)
must not run a synced BN: ``dwconv_bn_act_forward`` asks :func:`syncs_batch_stats` and then runs
conv -> synced BN -> activation eagerly.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBatchNormFunction

__all__ = ["SyncBatchNorm1d", "SyncBatchNorm2d", "SyncBatchNorm3d", "convert_sync_batchnorm",
           "syncs_batch_stats"]


def _group_size(process_group) -> int:
    """Processes the statistics are shared with (1 without an initialized process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group if process_group is not None else dist.group.WORLD)


def syncs_batch_stats(bn: nn.Module) -> bool:
    """``bn`` normalizes with statistics shared across processes in its next forward: a synced
    BatchNorm (ours or ``torch.nn.SyncBatchNorm``) in training mode with a process group of more
    than one process. Fused paths that compute batch statistics themselves must then call ``bn``."""
    return (isinstance(bn, (_SyncBatchNormMixin, nn.SyncBatchNorm)) and bn.training
            and _group_size(bn.process_group) > 1)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalization with the statistics of the batch of every process in ``group``;
    any device, any backend with all_gather / all_reduce (gloo on the CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                eps: float, momentum: float, group, world_size: int) -> torch.Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        acc = torch.promote_types(x.dtype, torch.float32)  # statistics at least in float32
        n = x.numel() // c if c else 0
        # (count, mean, sum of squared deviations) per channel, in float64: counts exact, and the
        # combination below loses nothing to cancellation.
        local = torch.zeros(2 * c + 1, dtype=torch.float64, device=x.device)
        local[0] = n
        if n > 0:
            var, mean = torch.var_mean(x.to(acc), dim=dims, correction=0)
            local[1:c + 1] = mean
            local[c + 1:] = var.double() * n
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # (world, 2C + 1)
        counts, means, m2s = stats[:, :1], stats[:, 1:c + 1], stats[:, c + 1:]
        total = float(counts.sum())
        if total <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when training, "
                             f"got {int(total)} over {world_size} processes (input size {tuple(x.shape)})")
        mean64 = (means * counts).sum(0) / total
        m2 = (m2s + counts * (means - mean64) ** 2).sum(0)  # Chan et al.: pooled sum of squares
        var64 = m2 / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_((m2 / (total - 1)).to(running_var.dtype), alpha=momentum)

        mean, invstd = mean64.to(acc), torch.rsqrt(var64 + eps).to(acc)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total, ctx.group = total, group
        scale = invstd if weight is None else invstd * weight.to(acc)
        shift = -mean * scale if bias is None else bias.to(acc) - mean * scale
        shape = (1, c) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape)).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        acc = mean.dtype
        xmu = x.to(acc) - mean.view(shape)
        dy_acc = dy.to(acc)
        sum_dy = dy_acc.sum(dims)
        sum_dy_xmu = (dy_acc * xmu).sum(dims)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1] and weight is not None:
            grad_w = (sum_dy_xmu * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = sum_dy.to(weight.dtype if weight is not None else acc)
        if ctx.needs_input_grad[0]:
            # Every rank's loss depends on every rank's input through the shared statistics.
            combined = torch.cat([sum_dy, sum_dy_xmu])
            dist.all_reduce(combined, group=ctx.group)
            mean_dy = (combined[:c] / ctx.total).view(shape)
            mean_dy_xmu = (combined[c:] / ctx.total).view(shape)
            scale = invstd if weight is None else invstd * weight.to(acc)
            grad_x = ((dy_acc - mean_dy - xmu * (invstd * invstd).view(shape) * mean_dy_xmu)
                      * scale.view(shape)).to(x.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


@torch.compiler.disable  # collectives and data-dependent counts: torch.compile runs it eagerly
def _sync_batch_norm(x, weight, bias, running_mean, running_var, eps, momentum, group, world_size):
    fn = _TorchSyncBatchNormFunction if x.is_cuda else _SyncBatchNormFunction
    return fn.apply(x, weight, bias, running_mean, running_var, eps, momentum, group, world_size)


class _SyncBatchNormMixin:
    """forward of a synced BatchNorm (before the BatchNorm class in the bases)."""

    process_group = None  # None: the default (WORLD) group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world_size = _group_size(self.process_group) if self.training else 1
        if world_size == 1:
            return super().forward(x)  # eval, or nothing to share: exactly the BatchNorm class
        self._check_input_dim(x)
        # nn.SyncBatchNorm.forward's bookkeeping: momentum, num_batches_tracked, which buffers.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return _sync_batch_norm(x, self.weight, self.bias, running_mean, running_var, self.eps, factor,
                                group, world_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", synchronized"


class SyncBatchNorm1d(_SyncBatchNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose training statistics span the processes of ``process_group``."""


class SyncBatchNorm2d(_SyncBatchNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics span the processes of ``process_group``."""


class SyncBatchNorm3d(_SyncBatchNormMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose training statistics span the processes of ``process_group``."""


_SYNCED = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm3d: SyncBatchNorm3d}


def _synced(bn: nn.modules.batchnorm._BatchNorm, process_group) -> nn.Module:
    cls = _SYNCED[type(bn)]
    out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
    out.process_group = process_group
    # The same Parameter and buffer objects (as torch's convert_sync_batchnorm): optimizers and
    # anything else holding them keep working.
    out.weight, out.bias = bn.weight, bn.bias
    out.running_mean, out.running_var = bn.running_mean, bn.running_var
    out.num_batches_tracked = bn.num_batches_tracked
    out.train(bn.training)
    if hasattr(bn, "qconfig"):
        out.qconfig = bn.qconfig
    return out


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` (the BN of ``DWConvBNAct``,
    ``FusedSequential`` and the blocks included) by ``SyncBatchNorm1d/2d/3d`` sharing its
    parameters and buffers; returns ``module`` (or the new layer when ``module`` is a BatchNorm),
    as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does. ``process_group``: the processes
    to share statistics with (default: all). Call it before wrapping the model in DDP.
    Other BatchNorm subclasses (whose forward we do not know) raise TypeError; layers that are
    synced already (ours, ``torch.nn.SyncBatchNorm``) stay as they are."""

    def convert(m: nn.Module, name: str) -> nn.Module:
        if type(m) in _SYNCED:
            out = _synced(m, process_group)
        elif (isinstance(m, nn.modules.batchnorm._BatchNorm)
              and not isinstance(m, (_SyncBatchNormMixin, nn.SyncBatchNorm))):
            raise TypeError(f"convert_sync_batchnorm: {name or 'the module'} is a {type(m).__name__}, a "
                            f"BatchNorm subclass this function cannot synchronize (it converts "
                            f"BatchNorm1d/2d/3d); convert it with its own library first")
        else:
            out = m
        for child_name, child in m.named_children():
            out.add_module(child_name, convert(child, f"{name}.{child_name}" if name else child_name))
        return out

    return convert(module, "")

