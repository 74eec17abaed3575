"""The kernel case matrix: one list of cases per op, each case reaching a launch path of the CUDA
kernels (csrc/cuda/<op>.cu) -- NCHW tile / packed / chunked planes, channels_last blocked / generic,
vector / scalar / head / tail, split reductions, shared-memory opt-in, tensor-core tiles -- with
the inputs it is run on.

One matrix, three targets:
- the CUDA emulator on the CPU (tools/cuda_emu/cases.py, every CI run);
- a CUDA GPU through the public ops, forward and backward vs float64 references
  (benchmarks/check_kernels.py: the GPU suite's smoke test, and its compute-sanitizer workload);
- the CPU kernels through the same script (``--device cpu``, the suite's rehearsal).
When a .cu file gains a launch path, add the case here: every target picks it up.
"""
from __future__ import annotations

import torch

CL = torch.channels_last
NCHW = torch.contiguous_format

# ---- depthwise conv + BN + activation -----------------------------------------------------------
# (N, C, H, W, (kh, kw), (sh, sw), (ph, pw), (dh, dw), layout): the kernel each one reaches
DW_CASES = [
    (2, 3, 40, 36, 3, 1, 1, 1, NCHW),      # fwd_nchw_tile_kernel: 2 x 2 tiles of 32 x 32
    (1, 2, 37, 35, 5, 2, 2, 1, NCHW),      # tile kernel, stride 2, odd sizes
    (1, 2, 35, 33, 7, 1, 3, 1, NCHW),      # tile kernel, k7
    (3, 5, 7, 7, 3, 1, 1, 1, NCHW),        # plane map: 49-output planes packed, one warp per plane
    (2, 4, 14, 14, 5, 2, 2, 1, NCHW),      # packed 7 x 7 planes, stride 2
    (2, 3, 1, 1, 3, 1, 1, 1, NCHW),        # 1 x 1 planes
    (1, 3, 24, 20, 3, 1, 2, 2, NCHW),      # dilation 2, 480 outputs: chunked planes (plane map)
    (1, 2, 70, 1, 3, 1, 1, 1, NCHW),       # W = 1, several chunks
    (2, 40, 9, 11, 3, 1, 1, 1, CL),        # fwd_cl_blocked_kernel, C = 40 (partial lanes)
    (2, 70, 10, 9, 5, 2, 2, 1, CL),        # blocked, stride 2
    (1, 33, 8, 8, 7, 1, 3, 1, CL),         # blocked, k7
    (2, 24, 9, 7, 3, 1, 2, 2, CL),         # fwd_cl_kernel (dilation)
    (1, 17, 7, 9, (3, 5), (1, 2), (1, 2), 1, CL),  # fwd_cl_kernel (rectangular, mixed stride)
    (1, 5, 1, 1, 3, 1, 1, 1, CL),          # 1 x 1 output, channels_last
    (2, 16, 48, 48, 3, 1, 1, 1, CL),       # many pixels: several row chunks in the reductions
    (2, 2, 5, 6, 3, 1, 3, 1, NCHW),        # padding > k - 1: outputs past the input own no dx
    (1, 3, 5, 6, 3, 2, 3, 1, CL),          # the same, channels_last, stride 2
    (1, 2, 19, 18, 17, 1, 8, 1, NCHW),     # 289 taps: two tap groups in grad_nchw_kernel
]
DW_IDS = [f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-k{c[4]}-s{c[5]}-d{c[7]}-{'cl' if c[8] is CL else 'nchw'}"
          for c in DW_CASES]


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def dw_inputs(case, dtype, seed=0, device="cpu"):
    """x, weight, (stride, padding, dilation) of a DW_CASES entry."""
    n, c, h, w, k, s, p, dl, layout = case
    g = torch.Generator().manual_seed(seed)
    kh, kw = _pair(k)
    x = torch.randn(n, c, h, w, generator=g).to(device, dtype).contiguous(memory_format=layout)
    wt = (torch.randn(c, 1, kh, kw, generator=g) * 0.3).to(device, dtype)
    return x, wt, (_pair(s), _pair(p), _pair(dl))


# ---- squeeze-and-excitation ---------------------------------------------------------------------
# (N, C, S, spatial, layout, misalign)
SE_CASES = [
    (2, 16, 4, (7, 7), NCHW, False),       # one chunk per plane
    (2, 16, 4, (64, 64), NCHW, False),     # 8 chunks of 512 per plane
    (2, 12, 3, (9, 13), NCHW, True),       # misaligned planes: scalar head, vector body, tail
    (3, 24, 6, (5, 5), CL, False),         # channels_last, 16-byte channel vectors
    (2, 20, 5, (6, 7), CL, True),          # channels_last, misaligned: scalar path
    (1, 7, 3, (3, 3), CL, False),          # C < 32 channel groups, odd C
    (2, 64, 16, (40, 40), CL, False),      # several pixel splits
    (2, 10, 3, (11,), NCHW, False),        # 3-D input (N, C, L)
    (2, 3, 2, (1, 1), NCHW, False),        # 1 x 1 spatial
    (1, 4000, 1200, (1, 1), NCHW, False),  # MLP with > 48 KiB of shared memory (opt-in)
]
SE_IDS = [f"{c[0]}x{c[1]}s{c[2]}-{'x'.join(map(str, c[3]))}-{'cl' if c[4] is CL else 'nchw'}"
          f"{'-misaligned' if c[5] else ''}" for c in SE_CASES]


def se_inputs(case, dtype, seed=0, device="cpu"):
    """x, w1, b1, w2, b2 of an SE_CASES entry."""
    n, c, s, spatial, layout, mis = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g).to(device, dtype)
    if len(spatial) == 2:
        x = x.contiguous(memory_format=layout)
    if mis:
        x = misaligned(x)
    w1 = (torch.randn(s, c, generator=g) / c ** 0.5).to(device, dtype)
    b1 = (torch.randn(s, generator=g) * 0.1).to(device, dtype)
    w2 = (torch.randn(c, s, generator=g) / s ** 0.5).to(device, dtype)
    b2 = (torch.randn(c, generator=g) * 0.1).to(device, dtype)
    return x, w1, b1, w2, b2


# ---- channel shuffle (shape, groups, layout), activation (numel, misaligned) --------------------
SHUFFLE_CASES = [((2, 12, 5, 7), 3, NCHW), ((2, 12, 5, 7), 4, CL), ((1, 6, 1, 1), 2, NCHW),
                 ((3, 8, 9), 2, NCHW), ((0, 4, 3, 3), 2, NCHW)]
ACTIVATION_CASES = [(1000, False), (1003, True), (5, False), (0, False)]

# ---- attention ----------------------------------------------------------------------------------
# (B, H, Nq, Nk, D): partial tiles on both sides (64-row tensor-core tiles, 32 / 64-row fp32
# tiles; 32-row query tiles of the dK/dV pass and 32-key tiles of the dQ pass at D = 128), several
# tiles of the double-buffered loops, Nq != Nk.
ATTN_SHAPES = [
    (1, 2, 1, 1, 32),
    (2, 1, 70, 70, 64),
    (1, 1, 7, 130, 128),
    (1, 1, 130, 33, 32),
    (1, 1, 65, 70, 128),
]
ATTN_IDS = ["x".join(map(str, s)) for s in ATTN_SHAPES]


def attn_inputs(shape, dtype, seed=0, layout="bhnd", device="cpu"):
    """q, k, v, grad_out; layout "bnhd": (B, N, H, D) storage viewed as (B, H, N, D), as from a
    fused qkv projection."""
    b, h, nq, nk, dim = shape
    g = torch.Generator().manual_seed(seed)

    def make(n):
        t = torch.randn(b, n, h, dim, generator=g).to(device, dtype)
        return t.transpose(1, 2) if layout == "bnhd" else t.transpose(1, 2).contiguous()
    return make(nq), make(nk), make(nk), make(nq)


# Non-finite inputs: NaN, +Inf or -Inf at one element, along one row, down one column of the
# first key tile, or at the last element of q, k or v; one key tile followed by masked keys
# (Nk = 5) and two tiles (Nk = 70). Out, dq, dk and dv show NaN and Inf where float64 eager
# softmax(q k^T * scale) @ v and its autograd do (testing.check_attention_nonfinite).
ATTN_NONFINITE_SHAPES = [(1, 1, 3, 5, 32), (1, 1, 3, 70, 32)]


def attn_nonfinite_inputs(shape, dtype, device="cpu"):
    """(what, q, k, v, grad_out) for every non-finite case of `shape`."""
    for pos, name in enumerate("qkv"):
        for value in (float("nan"), float("inf"), float("-inf")):
            for where in ("element", "row", "column", "last"):
                q, k, v, go = attn_inputs(shape, dtype, seed=pos, device=device)
                t = (q, k, v)[pos]
                if where == "element":
                    t[0, 0, 0, 0] = value
                elif where == "row":
                    t[0, 0, 0, :] = value
                elif where == "column":
                    t[0, 0, :64, 0] = value
                else:
                    t[-1, -1, -1, -1] = value
                yield f"{name} {where} = {value}", q, k, v, go


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values in the same layout, starting one element past a 64-byte boundary."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    if t.dim() == 4 and t.is_contiguous(memory_format=CL) and not t.is_contiguous():
        n, c, h, w = t.shape
        out = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        out = buf[1:].view(t.shape)
    out.copy_(t)
    return out
