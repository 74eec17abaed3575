"""channel_shuffle, shuffle_cat, shuffle_cat_split (op files: torchcv_ext/ops/channel_shuffle.py,
csrc/cpu/channel_shuffle.cpp, csrc/cuda/channel_shuffle.cu)."""
import pytest
import torch
import torch.nn.functional as F

import torchcv_ext
from torchcv_ext import ops
from torchcv_ext.ops.reference import channel_shuffle as ref
from testing import DEVICES, opcheck, requires_ext

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

SHAPES = [  # (N, C, H, W), groups
    ((2, 6, 5, 7), 3),
    ((3, 116, 14, 14), 2),   # ShuffleNetV2 x1.0 stage 2
    ((1, 240, 28, 28), 3),   # ShuffleNetV1 g=3
    ((2, 8, 1, 1), 4),       # 1x1 spatial
    ((2, 1, 3, 3), 1),       # C = 1
    ((2, 12, 3, 5), 12),     # groups = C
    ((4, 10, 7, 3), 2),      # odd spatial, S not a multiple of any vector width
]


def _as(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":  # a strided view: every other column
        return torch.cat([x, x], dim=3)[..., ::2]
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("shape,groups", SHAPES)
def test_forward_matches_torch(device, dtype, layout, shape, groups):
    x = _as(torch.randn(shape, device=device).to(dtype), layout)
    expect_cl = layout == "channels_last" and not x.is_contiguous()
    # The public function (eager inference on the CPU: ATen's kernel) and the op itself.
    ys = [ops.channel_shuffle(x, groups)]
    if torchcv_ext.extension_loaded():
        ys.append(torch.ops.torchcv_ext.channel_shuffle(x, groups))
    for y in ys:
        # A permutation is exact: compare bitwise with PyTorch's own op and with the reference.
        assert torch.equal(y, F.channel_shuffle(x.contiguous(), groups))
        assert torch.equal(y, ref.channel_shuffle(x, groups))
        assert y.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 8), (2, 6, 2, 3, 4)])
def test_other_ranks(device, shape):
    x = torch.randn(shape, device=device)
    assert torch.equal(ops.channel_shuffle(x, 3), F.channel_shuffle(x, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_strided_views_with_size_one_dims(device):
    """Spatial dims that cannot be flattened, with a size-1 dim between them (strides 256, 64, 16,
    16, 1 after slicing the last dim): the ops must copy, not walk the view with one stride."""
    x = torch.randn(2, 4, 4, 1, 16, device=device)[..., :8]
    assert torch.equal(ops.channel_shuffle(x, 2), F.channel_shuffle(x.contiguous(), 2))
    b = torch.randn(2, 4, 4, 1, 8, device=device)
    expected = F.channel_shuffle(torch.cat([x, b], 1).contiguous(), 2)
    assert torch.equal(ops.shuffle_cat(x, b), expected)
    lo, hi = ops.shuffle_cat_split(b, x)
    expected = F.channel_shuffle(torch.cat([b, x], 1).contiguous(), 2)
    assert torch.equal(lo, expected[:, :4]) and torch.equal(hi, expected[:, 4:])
    # A size-1 dim with an arbitrary stride between collapsible dims needs no copy and is exact.
    y = torch.randn(2, 4, 3, 5, device=device).unsqueeze(3).expand(2, 4, 3, 1, 5)
    assert torch.equal(ops.channel_shuffle(y, 2), F.channel_shuffle(y.contiguous(), 2))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.randn(0, 6, 4, 4, device=device)
    assert ops.channel_shuffle(x, 2).shape == x.shape
    a = torch.randn(0, 3, 2, 2, device=device)
    assert ops.shuffle_cat(a, a).shape == (0, 6, 2, 2)
    lo, hi = ops.shuffle_cat_split(a, a)
    assert lo.shape == hi.shape == a.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("shape", [(2, 58, 7, 7), (3, 5, 3, 1), (1, 1, 1, 1)])
def test_shuffle_cat(device, dtype, layout, shape):
    a = _as(torch.randn(shape, device=device).to(dtype), layout)
    b = _as(torch.randn(shape, device=device).to(dtype), layout)
    expected = F.channel_shuffle(torch.cat([a, b], 1).contiguous(), 2)
    assert torch.equal(ops.shuffle_cat(a, b), expected)
    lo, hi = ops.shuffle_cat_split(a, b)
    c = shape[1]
    assert torch.equal(lo, expected[:, :c]) and torch.equal(hi, expected[:, c:])
    assert lo.is_contiguous(memory_format=torch.channels_last) == hi.is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradients_match_reference(device, layout):
    x = _as(torch.randn(2, 12, 5, 3, device=device), layout).requires_grad_()
    g = torch.randn(2, 12, 5, 3, device=device)
    (gx,) = torch.autograd.grad(ops.channel_shuffle(x, 4), x, g)
    (gr,) = torch.autograd.grad(ref.channel_shuffle(x, 4), x, g)
    assert torch.equal(gx, gr)

    a = _as(torch.randn(2, 6, 5, 3, device=device), layout).requires_grad_()
    b = _as(torch.randn(2, 6, 5, 3, device=device), layout).requires_grad_()
    g2 = torch.randn(2, 12, 5, 3, device=device)
    got = torch.autograd.grad(ops.shuffle_cat(a, b), (a, b), g2)
    exp = torch.autograd.grad(ref.shuffle_cat(a, b), (a, b), g2)
    assert all(torch.equal(u, v) for u, v in zip(got, exp))
    # split form, with one half unused (its gradient is None -> zeros)
    lo, hi = ops.shuffle_cat_split(a, b)
    got = torch.autograd.grad((lo * 2).sum(), (a, b))
    rlo, _ = ref.shuffle_cat_split(a, b)
    exp = torch.autograd.grad((rlo * 2).sum(), (a, b))
    assert all(torch.equal(u, v) for u, v in zip(got, exp))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c,groups", [(12, 2), (12, 3), (12, 4), (24, 6), (10, 5), (7, 7), (16, 8),
                                      (2, 2), (26, 2), (48, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_channels_last_transpose_paths(device, c, groups, dtype):
    """channels_last with unit channel strides: the CPU kernel's vector interleave of groups = 2
    for 4-byte words (channels per group 1, 6, 13 and 24: 8-wide, 4-wide and scalar steps), its transposes by groups (2/3/4) and
    by channels per group (2/3/4: the backward of groups = C/2..C/4, shuffle_cat's backward), the
    two-part sources and destinations of shuffle_cat(_split) with even and odd C, and the general
    table path for the other shapes -- forward and backward equal torch's."""
    x = torch.randn(2, c, 3, 5, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(2, c, 3, 5, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    y = ops.channel_shuffle(x, groups)
    assert torch.equal(y, F.channel_shuffle(x.detach().contiguous(), groups))
    (gx,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(ref.channel_shuffle(x, groups), x, g)
    assert torch.equal(gx, gr)
    a, b = (t.detach().requires_grad_() for t in (x, torch.randn_like(x)))
    lo, hi = ops.shuffle_cat_split(a, b)
    rlo, rhi = ref.shuffle_cat_split(a, b)
    assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
    got = torch.autograd.grad((lo, hi), (a, b), (g, g * 2))
    exp = torch.autograd.grad((rlo, rhi), (a, b), (g, g * 2))
    assert all(torch.equal(u, v) for u, v in zip(got, exp))


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.channel_shuffle(t, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.channel_shuffle(t, 3), (x,))
    a = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.shuffle_cat, (a, b))
    assert torch.autograd.gradcheck(lambda u, v: ops.shuffle_cat_split(u, v), (a, b))
    assert torch.autograd.gradgradcheck(lambda u, v: ops.shuffle_cat_split(u, v), (a, b))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    cl = torch.channels_last
    x = torch.randn(2, 6, 4, 3, device=device, requires_grad=True)
    xcl = torch.randn(2, 6, 4, 3, device=device).to(memory_format=cl).requires_grad_()
    a = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, device=device, requires_grad=True)
    acl = a.detach().to(memory_format=cl).requires_grad_()
    bcl = b.detach().to(memory_format=cl).requires_grad_()
    g = torch.randn(2, 4, 3, 3, device=device)
    lib = torch.ops.torchcv_ext
    for op, args in [
        (lib.channel_shuffle, (x, 3)), (lib.channel_shuffle, (xcl, 2)),
        (lib._channel_shuffle_backward, (x.detach(), 3)),
        (lib.shuffle_cat, (a, b)), (lib.shuffle_cat, (acl, bcl)),
        (lib.shuffle_cat_split, (a, b)), (lib.shuffle_cat_split, (acl, bcl)),
        (lib._shuffle_cat_backward, (g, g)),
    ]:
        opcheck(op, args)


@requires_ext
def test_torch_compile_fullgraph():
    def block_tail(x, a, b):
        lo, hi = ops.shuffle_cat_split(a, b)
        return ops.channel_shuffle(x, 4) * 2, ops.shuffle_cat(lo, hi) + 1

    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    a = torch.randn(2, 3, 5, 5, requires_grad=True)
    b = torch.randn(2, 3, 5, 5, requires_grad=True)
    compiled = torch.compile(block_tail, fullgraph=True, backend="aot_eager")
    got = compiled(x, a, b)
    exp = block_tail(x, a, b)
    assert all(torch.equal(u, v) for u, v in zip(got, exp))
    sum(t.sum() for t in got).backward()
    assert x.grad is not None and a.grad is not None


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises_clearly(device):
    x = torch.randn(2, 6, 4, 4, device=device)
    with pytest.raises(RuntimeError, match="divisible by groups"):
        ops.channel_shuffle(x, 4)
    with pytest.raises(RuntimeError, match="groups must be >= 1"):
        ops.channel_shuffle(x, 0)
    with pytest.raises(RuntimeError, match="at least 3 dims"):
        ops.channel_shuffle(torch.randn(6, 4, device=device), 2)
    with pytest.raises(RuntimeError, match="same shape"):
        ops.shuffle_cat(x, torch.randn(2, 4, 4, 4, device=device))
    with pytest.raises(RuntimeError, match="dtype"):
        ops.shuffle_cat(x, x.double())


def test_module_drop_in():
    m = torchcv_ext.nn.ChannelShuffle(3)
    x = torch.randn(2, 9, 4, 4)
    assert torch.equal(m(x), torch.nn.ChannelShuffle(3)(x))
    assert "groups=3" in repr(m)
    with pytest.raises(ValueError):
        torchcv_ext.nn.ChannelShuffle(0)


def test_reference_path_without_extension(monkeypatch):
    from torchcv_ext.ops import _common

    monkeypatch.setattr(_common, "ops_available", lambda: False)
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(ops.channel_shuffle(x, 2), F.channel_shuffle(x, 2))
    a, b = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    assert torch.equal(ops.shuffle_cat(a, b), F.channel_shuffle(torch.cat([a, b], 1), 2))


@requires_ext
def test_reference_kernel_registration_covers_missing_backends():
    # Every op has a kernel for CPU and CUDA: compiled, or the reference registered in its place.
    from torchcv_ext.ops import _common

    for op in ["channel_shuffle", "_channel_shuffle_backward", "shuffle_cat", "shuffle_cat_split",
               "_shuffle_cat_backward"]:
        for key in ["CPU", "CUDA"]:
            assert _common.has_kernel(op, key), (op, key)
    assert _common.BACKENDS["channel_shuffle"]["CPU"] == "C++ kernel"
