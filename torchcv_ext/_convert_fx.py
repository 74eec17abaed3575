"""The structural half of ``torchcv_ext.convert``: find the fusable patterns in any model's blocks
with torch.fx and rewrite each block's forward to call the fused ops.

Every module whose forward is not torch's or ours is traced *shallowly* (its children are leaves;
a child ``nn.Sequential`` -- or a subclass that keeps Sequential's forward -- is inlined, so a
pattern may run across it). Each forward is traced twice, in training and in eval mode, so Python
code that branches on ``self.training`` keeps its meaning. Patterns, on the traced graph:

==================  ============================================================================
pattern             graph (any of the spellings listed)                  ->  calls
==================  ============================================================================
conv_bn_act /       ``Conv2d -> BatchNorm2d [-> act]``; timm ``BatchNormAct2d`` is BN + act    conv_bn_act_forward
dwconv_bn_act       (depthwise conv: the fused DWConvBNAct ops)
conv_bn_add_act     ``Conv2d -> BatchNorm2d -> + residual [-> act]``                            (residual post-op)
squeeze_excite      ``pool -> 1x1 conv|Linear -> act -> 1x1 conv|Linear -> sigmoid|hardsigmoid  ops.squeeze_excite
                    -> * x`` (pool: AdaptiveAvgPool2d(1), adaptive_avg_pool2d, mean over H, W)
channel_shuffle     ``view(n, g, c // g, h, w) -> transpose(1, 2) [-> contiguous] -> view(n, -1,   ops.channel_shuffle
                    h, w)`` (the ShuffleNet repositories' function); after ``cat([a, b], 1)``    (ops.shuffle_cat)
                    with g = 2: shuffle_cat
attention           ``softmax(q @ k^T * scale [dropout]) @ v`` (scale on q or on the scores) and  ops.attention
                    ``F.scaled_dot_product_attention`` without mask / dropout
==================  ============================================================================

Activations are those of the project's one registry (torchcv_ext/activations.py), as modules
or as calls. The rewritten block keeps its object, class (a subclass is swapped in), submodules
and state_dict; its forward is the rewritten graph, run only for calls whose optional arguments
have the values it was traced with (the original forward otherwise). A block that does not trace
is left to the module-structure pass and reported.
"""
from __future__ import annotations

import copy
import inspect
import operator
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from torchcv_ext import activations
from torchcv_ext.nn.conv_bn import conv_bn_act_forward
from torchcv_ext.ops.attention import attention as _attention_op
from torchcv_ext.ops.channel_shuffle import channel_shuffle as _channel_shuffle_op
from torchcv_ext.ops.channel_shuffle import shuffle_cat as _shuffle_cat_op
from torchcv_ext.ops.squeeze_excite import squeeze_excite as _squeeze_excite_op

FLAG = "_torchcv_ext_fx_base"  # class attribute of a rewritten block's class: the original class
FOUND = "_torchcv_ext_fx_fused"  # ... and what its forward fuses: ((pattern, submodule path), ...)
INLINED = "_torchcv_ext_fx_inlined"  # ... and the child Sequentials its forward runs inline

Report = Callable[[str, str], None]  # (pattern or reason, module path)


# ---------------------------------------------------------------------------------------------
# What the rewritten graphs call. Each checks at run time what the graph cannot know (tensor
# ranks, a module swapped since), and computes the original composition otherwise.
# ---------------------------------------------------------------------------------------------
def _fusable_bn(bn: nn.Module) -> bool:
    """Exactly nn.BatchNorm2d, or a BatchNorm2d + activation module (timm's BatchNormAct2d)
    whose extra layers the fused call covers."""
    if type(bn) is nn.BatchNorm2d:
        return True
    if not isinstance(bn, nn.BatchNorm2d) or not hasattr(bn, "act"):
        return False
    drop = getattr(bn, "drop", None)
    act = bn.act
    return ((drop is None or type(drop) is nn.Identity)
            and (type(act) is nn.Identity or activations.fused_name(act) is not None)
            and set(bn._modules) <= {"act", "drop"})


def _bn_act(bn: nn.Module) -> Optional[str]:
    """The activation a norm + act module applies after the BN (None: none)."""
    act = bn._modules.get("act")
    if act is None or type(act) is nn.Identity:
        return None
    return activations.fused_name(act)


def fused_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[str], x: torch.Tensor,
                  residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``act(bn(conv(x)) [+ residual])`` through conv_bn_act_forward (BN + act of a BatchNormAct2d
    included); the eager modules if ``bn`` was replaced since (e.g. by SyncBatchNorm)."""
    if not _fusable_bn(bn):
        y = bn(conv(x))
        y = y if residual is None else y + residual
        return y if act is None else activations.forward(act, y)
    inner = _bn_act(bn)
    if inner is not None:  # BatchNormAct2d: its activation comes before any residual
        y = conv_bn_act_forward(conv, bn, inner, x)
        y = y if residual is None else y + residual
        return y if act is None else activations.forward(act, y)
    return conv_bn_act_forward(conv, bn, act, x, residual)


def _fc_params(fc: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    b = fc.bias
    if b is None:
        b = torch.zeros(fc.weight.shape[0], dtype=fc.weight.dtype, device=fc.weight.device)
    return fc.weight, b


def fused_squeeze_excite(x: torch.Tensor, fc1: nn.Module, fc2: nn.Module, act: str, gate: str) -> torch.Tensor:
    """``x * gate(fc2(act(fc1(mean_hw(x)))))`` (fc: 1x1 Conv2d or Linear) as one op."""
    if x.dim() != 4:
        s = x.mean((-2, -1), keepdim=True)
        lin = isinstance(fc1, nn.Linear)
        s = s.flatten(1) if lin else s
        s = activations.forward(gate, fc2(activations.forward(act, fc1(s))))
        return x * (s[:, :, None, None] if lin else s)
    w1, b1 = _fc_params(fc1)
    w2, b2 = _fc_params(fc2)
    return _squeeze_excite_op(x, w1, b1, w2, b2, act, gate)


def fused_channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    return _channel_shuffle_op(x, groups)


def fused_shuffle_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(cat([a, b], 1), 2)``; one pass when the halves have the same shape."""
    if a.shape == b.shape and a.dim() == 4:
        return _shuffle_cat_op(a, b)
    return _channel_shuffle_op(torch.cat([a, b], 1), 2)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float],
                    dropout: Optional[nn.Module] = None) -> torch.Tensor:
    """``softmax(q @ k^T * scale) @ v`` through the fused op; with an active dropout on the
    attention weights (training), or other than (B, H, N, D) inputs, the eager composition."""
    if (dropout is not None and dropout.training and dropout.p > 0) or q.dim() != 4 \
            or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        s = q.shape[-1] ** -0.5 if scale is None else scale
        a = ((q @ k.transpose(-2, -1)) * s).softmax(dim=-1)
        return (a if dropout is None else dropout(a)) @ v
    return _attention_op(q, k, v, scale)


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
class _ShallowTracer(fx.Tracer):
    """Traces one module's own forward: every submodule call is a leaf; buffers are proxied too,
    so a forward that updates one in place (a counter, running statistics) changes nothing."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _inlinable(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward \
        and not type(m).__module__.startswith("torchcv_ext")


def _specialized_params(module: nn.Module) -> Tuple[inspect.Signature, List[str], Dict[str, object]]:
    """forward's signature, its required parameters (traced as inputs) and the optional ones with
    their defaults (traced as constants). Raises TypeError for *args / **kwargs."""
    sig = inspect.signature(module.forward)
    required, concrete = [], {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError("forward takes *args / **kwargs")
        if p.default is p.empty:
            required.append(p.name)
        else:
            concrete[p.name] = p.default
    return sig, required, concrete


def _trace(module: nn.Module, training: bool, concrete: Dict[str, object]) -> fx.Graph:
    was = module.training
    module.training = training  # this module only: children are leaves
    try:
        return _ShallowTracer().trace(module, concrete_args=dict(concrete) or None)
    finally:
        module.training = was


# ---------------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------------
class _Graph:
    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        self.root, self.graph = root, graph
        self.inlined: Set[str] = set()
        self.found: List[Tuple[str, str]] = []   # (pattern, submodule path), in order
        self.left: List[Tuple[str, str]] = []  # (submodule path, reason)

    def mod(self, n) -> Optional[nn.Module]:
        if isinstance(n, fx.Node) and n.op == "call_module":
            return self.root.get_submodule(n.target)
        return None

    def attr(self, target: str, before: fx.Node) -> fx.Node:
        with self.graph.inserting_before(before):
            return self.graph.get_attr(target)

    # -- structure clean-up ------------------------------------------------------------------
    def inline_sequentials(self) -> None:
        changed = True
        while changed:
            changed = False
            for n in list(self.graph.nodes):
                m = self.mod(n)
                if m is None or not _inlinable(m) or len(n.args) != 1 or n.kwargs:
                    continue
                self.inlined.add(n.target)
                cur = n.args[0]
                with self.graph.inserting_before(n):
                    for name in m._modules:
                        if m._modules[name] is not None:
                            cur = self.graph.call_module(f"{n.target}.{name}", (cur,))
                n.replace_all_uses_with(cur)
                self.graph.erase_node(n)
                changed = True

    def drop_identities(self) -> None:
        for n in list(self.graph.nodes):
            m = self.mod(n)
            if m is not None and len(n.args) == 1 and not n.kwargs and (
                    type(m) is nn.Identity or (type(m) in (nn.Dropout, nn.Dropout2d) and m.p == 0)):
                n.replace_all_uses_with(n.args[0])
                self.graph.erase_node(n)

    def erase(self, nodes: List[fx.Node]) -> None:
        """Erase the replaced pattern nodes once unused, then the shape helpers (``x.size()``,
        ``x.shape[i]``, ``c // g``) left without users."""
        pure = {"size", "dim", operator.getitem, operator.floordiv, getattr}
        pending = [n for n in nodes if n.op != "placeholder"]
        changed = True
        while changed:
            changed = False
            for n in list(pending):
                if not n.users:
                    self.graph.erase_node(n)
                    pending.remove(n)
                    changed = True
            for n in list(self.graph.nodes):
                if not n.users and n.op in ("call_method", "call_function") and n.target in pure:
                    self.graph.erase_node(n)
                    changed = True

    # -- node predicates ---------------------------------------------------------------------
    def act_name(self, n) -> Optional[str]:
        """Op activation name if ``n`` is an activation call on one tensor, else None."""
        if not isinstance(n, fx.Node):
            return None
        m = self.mod(n)
        if m is not None:
            return None if type(m) is nn.Identity else activations.fused_name(m)
        if n.op in ("call_function", "call_method") and len(n.args) >= 1 and set(n.kwargs) <= {"inplace", "approximate"}:
            if len(n.args) > 1 and n.target is not F.gelu:
                return None
            return activations.call_name(n.op, n.target, n.args, n.kwargs)
        return None


def _single_user(n: fx.Node) -> Optional[fx.Node]:
    return next(iter(n.users)) if len(n.users) == 1 else None


_ADDS = {operator.add, operator.iadd, torch.add}
_MULS = {operator.mul, operator.imul, torch.mul}
_MATMULS = {operator.matmul, torch.matmul}


def _is_add(n: fx.Node) -> bool:
    if n.op == "call_function" and n.target in _ADDS and len(n.args) == 2 and not n.kwargs:
        return True
    return n.op == "call_method" and n.target in ("add", "add_") and len(n.args) == 2 and not n.kwargs


def _is_mul(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _MULS) or
            (n.op == "call_method" and n.target in ("mul", "mul_"))) and len(n.args) == 2 and not n.kwargs


def _method_or_fn(n, names: Tuple[str, ...], fns: Tuple) -> bool:
    return isinstance(n, fx.Node) and ((n.op == "call_method" and n.target in names)
                                       or (n.op == "call_function" and n.target in fns))


# ---------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------
def _conv_ok(conv: Optional[nn.Module]) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros"


def _fuse_conv_bn(g: _Graph) -> None:
    for bn_node in list(g.graph.nodes):
        if bn_node.graph is None:  # erased by an earlier match
            continue
        bn = g.mod(bn_node)
        if bn is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        conv_node = bn_node.args[0] if len(bn_node.args) == 1 and not bn_node.kwargs else None
        conv = g.mod(conv_node)
        if not _conv_ok(conv):
            g.left.append((bn_node.target, "its input is not an nn.Conv2d output"))
            continue
        if len(conv_node.users) != 1:
            g.left.append((bn_node.target, f"the output of {conv_node.target} has other users"))
            continue
        if not _fusable_bn(bn) or bn.num_features != conv.out_channels or len(conv_node.args) != 1 \
                or conv_node.kwargs:
            g.left.append((bn_node.target, f"{type(bn).__name__} is not a plain BatchNorm2d (or BatchNormAct2d) "
                                           "of that conv's channels"))
            continue
        chain, cur, act, residual = [conv_node, bn_node], bn_node, None, None
        user = _single_user(cur)
        if user is not None and _bn_act(bn) is None:
            if _is_add(user):
                other = user.args[1] if user.args[0] is cur else user.args[0]
                if isinstance(other, fx.Node) and other is not cur:
                    residual, cur = other, user
                    chain.append(user)
                    user = _single_user(cur)
            name = g.act_name(user) if user is not None else None
            if name is not None:
                act, cur = name, user
                chain.append(user)
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        kind = "conv_bn_add_act" if residual is not None else ("dwconv_bn_act" if depthwise else "conv_bn_act")
        with g.graph.inserting_before(cur):
            conv_attr = g.graph.get_attr(conv_node.target)
            bn_attr = g.graph.get_attr(bn_node.target)
            args = (conv_attr, bn_attr, act, conv_node.args[0]) + ((residual,) if residual is not None else ())
            new = g.graph.call_function(fused_conv_bn, args)
        cur.replace_all_uses_with(new)
        g.erase(chain)
        g.found.append((kind, bn_node.target))


def _strip_views(g: _Graph, n, methods=("view", "reshape", "expand_as", "expand", "view_as", "unsqueeze",
                                        "flatten", "squeeze"),
                 fns=(torch.reshape, torch.flatten, torch.unsqueeze, torch.squeeze)) -> Tuple[object, List[fx.Node]]:
    chain = []
    while _method_or_fn(n, methods, fns) and len(n.users) == 1:
        chain.append(n)
        n = n.args[0]
    return n, chain


def _is_fc(m: Optional[nn.Module]) -> bool:
    if type(m) is nn.Linear:
        return True
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.groups == 1 and m.dilation == (1, 1))


def _pool_input(g: _Graph, n) -> Optional[fx.Node]:
    """x if ``n`` is a global average pool of x (keeping or dropping the H, W dims)."""
    if not isinstance(n, fx.Node):
        return None
    m = g.mod(n)
    if m is not None:
        ok = type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1))
        return n.args[0] if ok and len(n.args) == 1 else None
    if n.op == "call_function" and n.target is F.adaptive_avg_pool2d:
        size = n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size")
        return n.args[0] if size in (1, (1, 1), [1, 1]) else None
    if _method_or_fn(n, ("mean",), (torch.mean,)):
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if isinstance(dims, (tuple, list)) and sorted(dims) in ([2, 3], [-2, -1]) \
                and set(n.kwargs) <= {"dim", "keepdim"}:
            return n.args[0]
    return None


def _fuse_squeeze_excite(g: _Graph) -> None:
    for mul in list(g.graph.nodes):
        if mul.graph is None or not _is_mul(mul):
            continue
        for x, gate_out in (mul.args, mul.args[::-1]):
            if not isinstance(x, fx.Node) or not isinstance(gate_out, fx.Node):
                continue
            gate_node, chain = _strip_views(g, gate_out)
            gate = g.act_name(gate_node)
            if gate not in ("sigmoid", "hardsigmoid") or len(gate_node.users) != 1:
                continue
            fc2_node = gate_node.args[0]
            fc2 = g.mod(fc2_node)
            if not _is_fc(fc2) or len(fc2_node.users) != 1:
                continue
            act_node = fc2_node.args[0]
            act = g.act_name(act_node)
            fc1_node = act_node.args[0] if act is not None else act_node
            act = act or "identity"
            fc1 = g.mod(fc1_node)
            if not _is_fc(fc1) or type(fc1) is not type(fc2) or len(fc1_node.users) != 1 \
                    or (act_node is not fc1_node and len(act_node.users) != 1):
                continue
            pooled, chain2 = _strip_views(g, fc1_node.args[0])
            if _pool_input(g, pooled) is not x or len(pooled.users) != 1:
                continue
            c = fc1.in_channels if type(fc1) is nn.Conv2d else fc1.in_features
            s = fc1.out_channels if type(fc1) is nn.Conv2d else fc1.out_features
            c2 = fc2.out_channels if type(fc2) is nn.Conv2d else fc2.out_features
            s2 = fc2.in_channels if type(fc2) is nn.Conv2d else fc2.in_features
            if (c, s) != (c2, s2):
                continue
            with g.graph.inserting_before(mul):
                new = g.graph.call_function(fused_squeeze_excite, (
                    x, g.graph.get_attr(fc1_node.target), g.graph.get_attr(fc2_node.target), act, gate))
            mul.replace_all_uses_with(new)
            nodes = [pooled] + chain2[::-1] + [fc1_node] + ([act_node] if act_node is not fc1_node else []) \
                + [fc2_node, gate_node] + chain[::-1] + [mul]
            g.erase(nodes)
            g.found.append(("squeeze_excite", fc1_node.target))
            break


def _int_arg(n: fx.Node, i: int, key: str):
    return n.args[i] if len(n.args) > i else n.kwargs.get(key)


def _dims(n: fx.Node) -> list:
    """The target shape of a view / reshape call (given as varargs or as one sequence)."""
    rest = list(n.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    return rest


def _fuse_channel_shuffle(g: _Graph) -> None:
    for out in list(g.graph.nodes):
        if out.graph is None:
            continue
        flat = (_method_or_fn(out, ("view", "reshape"), (torch.reshape,)) and len(_dims(out)) == 4) or \
            (_method_or_fn(out, ("flatten",), (torch.flatten,)) and tuple(out.args[1:]) == (1, 2) and not out.kwargs)
        if not flat:
            continue
        t = out.args[0]
        chain = [out]
        if _method_or_fn(t, ("contiguous",), ()) and len(t.users) == 1:
            chain.append(t)
            t = t.args[0]
        if not (_method_or_fn(t, ("transpose",), (torch.transpose,)) and sorted(t.args[1:3]) == [1, 2]
                and len(t.users) == 1):
            continue
        split = t.args[0]
        if not (_method_or_fn(split, ("view", "reshape"), (torch.reshape,)) and len(_dims(split)) == 5
                and len(split.users) == 1):
            continue
        groups = _dims(split)[1]
        if not isinstance(groups, int) or groups < 1:
            continue
        chain += [t, split]
        x = split.args[0]
        cat = x if isinstance(x, fx.Node) and x.op == "call_function" and x.target is torch.cat else None
        parts = cat.args[0] if cat is not None else None
        dim = _int_arg(cat, 1, "dim") if cat is not None else None
        with g.graph.inserting_before(out):
            if groups == 2 and isinstance(parts, (list, tuple)) and len(parts) == 2 and dim == 1 \
                    and all(u is split or _shape_of(u) for u in cat.users):
                new = g.graph.call_function(fused_shuffle_cat, tuple(parts))
                chain.append(cat)
                kind = "shuffle_cat"
            else:
                new = g.graph.call_function(fused_channel_shuffle, (x, groups))
                kind = "channel_shuffle"
        out.replace_all_uses_with(new)
        g.erase(chain[::-1])
        g.found.append((kind, ""))


def _shape_of(n: fx.Node) -> bool:
    """``n`` reads only the shape of its input (``x.size()``, ``x.shape``, ``x.dim()``)."""
    return (n.op == "call_method" and n.target in ("size", "dim")) or \
        (n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",))


def _transposed_last2(n) -> Optional[fx.Node]:
    if _method_or_fn(n, ("transpose",), (torch.transpose,)) and len(n.args) == 3 and \
            sorted(n.args[1:3]) in ([-2, -1], [2, 3]):
        return n.args[0]
    return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fuse_attention(g: _Graph) -> None:
    for out in list(g.graph.nodes):
        if out.graph is None:
            continue
        if out.op == "call_function" and out.target is F.scaled_dot_product_attention:
            _fuse_sdpa(g, out)
            continue
        if not (out.op == "call_function" and out.target in _MATMULS and len(out.args) == 2):
            continue
        a, v = out.args
        chain = [out]
        drop = g.mod(a)
        drop_attr = None
        if drop is not None and type(drop) is nn.Dropout and len(a.users) == 1:
            drop_attr, chain = a.target, chain + [a]
            a = a.args[0]
        if not (_method_or_fn(a, ("softmax",), (torch.softmax, F.softmax)) and len(a.users) == 1):
            continue
        dim = _int_arg(a, 1, "dim")
        if dim not in (-1, 3) or set(a.kwargs) - {"dim"}:
            continue
        chain.append(a)
        scores, scale = a.args[0], 1.0
        if isinstance(scores, fx.Node) and len(scores.users) == 1 and (_is_mul(scores) or (
                scores.op == "call_function" and scores.target is operator.truediv and len(scores.args) == 2)):
            lhs, rhs = scores.args
            if _is_mul(scores) and _number(lhs):
                lhs, rhs = rhs, lhs
            if not _number(rhs):
                continue
            scale = rhs if _is_mul(scores) else 1.0 / rhs
            chain.append(scores)
            scores = lhs
        if not (isinstance(scores, fx.Node) and scores.op == "call_function" and scores.target in _MATMULS
                and len(scores.users) == 1):
            continue
        chain.append(scores)
        q, kt = scores.args
        k = _transposed_last2(kt)
        if k is None or len(kt.users) != 1:
            continue
        chain.append(kt)
        if _is_mul(q) and len(q.users) == 1 and _number(q.args[1]) and scale == 1.0:  # q * scale first
            scale, q = q.args[1], q.args[0]
            chain.append(scores.args[0])
        with g.graph.inserting_before(out):
            d = g.graph.get_attr(drop_attr) if drop_attr is not None else None
            new = g.graph.call_function(fused_attention, (q, k, v, float(scale), d))
        out.replace_all_uses_with(new)
        g.erase(chain[::-1])
        g.found.append(("attention", ""))


def _fuse_sdpa(g: _Graph, n: fx.Node) -> None:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    args = dict(zip(names, n.args))
    args.update(n.kwargs)
    if set(args) - set(names):
        g.left.append(("", "scaled_dot_product_attention with other arguments"))
        return
    if args.get("attn_mask") is not None or args.get("dropout_p", 0.0) != 0.0 or args.get("is_causal", False):
        g.left.append(("", "scaled_dot_product_attention with a mask, dropout or is_causal"))
        return
    scale = args.get("scale")
    if scale is not None and not _number(scale):
        return
    with g.graph.inserting_before(n):
        new = g.graph.call_function(fused_attention, (args["query"], args["key"], args["value"],
                                                      None if scale is None else float(scale), None))
    n.replace_all_uses_with(new)
    g.erase([n])
    g.found.append(("attention", ""))


_PASSES = (_fuse_squeeze_excite, _fuse_channel_shuffle, _fuse_attention, _fuse_conv_bn)


def _rewrite(module: nn.Module, graph: fx.Graph) -> _Graph:
    g = _Graph(module, graph)
    g.inline_sequentials()
    g.drop_identities()
    for p in _PASSES:
        p(g)
    graph.lint()
    return g


# ---------------------------------------------------------------------------------------------
# Installing a rewritten forward
# ---------------------------------------------------------------------------------------------
def _compile(module: nn.Module, graph: fx.Graph) -> Callable:
    # GraphModule generates and compiles the code; its class's forward reads every submodule from
    # ``self`` by name, so it runs on the original block (and sees submodules replaced later).
    return type(fx.GraphModule(module, graph)).forward


def _rebuild(base: type, state: dict) -> nn.Module:
    """Unpickle / deepcopy: the original class with its state, rewritten again."""
    obj = base.__new__(base)
    obj.__dict__.update(state)
    try:
        rewrite_module(obj, lambda *a: None)
    except Exception:  # noqa: BLE001  (never fails a load: the original forward is correct)
        pass
    return obj


def _install(module: nn.Module, fns: Dict[bool, Callable], sig: inspect.Signature,
             required: List[str], concrete: Dict[str, object], found: tuple, inlined: tuple) -> None:
    base = type(module)
    original = base.forward

    def forward(self, *args, **kwargs):
        if not kwargs and len(args) == len(required):
            return fns[self.training](self, *args)
        bound = sig.bind(*args, **kwargs)
        if all(bound.arguments[k] is v or (k in bound.arguments and _same(bound.arguments[k], v))
               for k, v in concrete.items() if k in bound.arguments):
            return fns[self.training](self, *(bound.arguments[k] for k in required))
        return original(self, *args, **kwargs)

    def __reduce_ex__(self, protocol):  # pickle: the original class, rewritten again on load
        return _rebuild, (base, dict(self.__dict__))

    def __deepcopy__(self, memo):  # a copy of the same rewritten class (no new trace)
        new = cls.__new__(cls)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    ns = {"forward": forward, FLAG: base, FOUND: found, "__reduce_ex__": __reduce_ex__,
          "__deepcopy__": __deepcopy__, INLINED: inlined,
          "__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__}
    cls = type(base.__name__, (base,), ns)
    module.__class__ = cls


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def traceable_target(m: nn.Module) -> bool:
    """Modules whose own forward convert() traces: not torch's built-in layers (but Sequential),
    not torchcv_ext's, not already rewritten, and with submodules."""
    cls = type(m)
    if getattr(cls, FLAG, None) is not None or not m._modules:
        return False
    if cls.__module__.startswith("torchcv_ext") or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
        return False
    if any(c.__module__.startswith("torch.") and c not in (nn.Module, nn.Sequential) for c in cls.__mro__):
        return False  # torch's layers and their subclasses (timm's BatchNormAct2d: a pattern atom)
    return "forward" in {k for c in cls.__mro__ if c is not nn.Module for k in vars(c)}


def rewrite_module(module: nn.Module, report: Report) -> Set[str]:
    """Trace ``module``'s forward (training and eval), fuse the patterns, install the result when
    anything was fused. Reports each fused pattern and each pattern left (with its reason);
    returns the paths of the child Sequentials inlined into the graph. Raises on trace errors."""
    sig, required, concrete = _specialized_params(module)
    graphs = {t: _trace(module, t, concrete) for t in (True, False)}
    same = graphs[True].python_code("self").src == graphs[False].python_code("self").src
    rewritten = {t: _rewrite(module, graphs[t]) for t in ((False,) if same else (True, False))}
    g = rewritten[False]
    for path, reason in g.left:
        report(reason, path)
    if not g.found and not (not same and rewritten[True].found):
        return set()
    fns = {t: _compile(module, rewritten[t if not same else False].graph) for t in (True, False)}
    inlined = g.inlined | (rewritten[True].inlined if not same else set())
    _install(module, fns, sig, required, concrete, tuple(g.found), tuple(sorted(inlined)))
    for kind, path in g.found:
        report(kind, path)
    return inlined
