"""Global-memory traffic of every CUDA kernel, counted by the CUDA emulator (no GPU needed).

The memory-bound ops (depthwise conv + BN, squeeze-and-excitation, channel shuffle, hardswish) are
as fast on a GPU as their global-memory traffic allows. build.py's "traffic" flavor runs the real
kernels (host code included) with every load and store recorded (traffic.h, traffic.cpp), grouped
into warp requests of 32-byte sectors as a GPU issues them. Per case this reports:

  * DRAM estimate: the distinct sectors each launch reads and writes, summed over the launches
    (what DRAM serves if L2 keeps whatever a launch touches twice), against the case's floor: every
    tensor the case must read or write, once (the byte counts of benchmarks/, plus the parameters).
  * coalescing: sectors the warp requests would need if perfectly packed / sectors they touch,
    loads and stores (1.0 = every sector fully used by the request that fetched it; halo and
    stride-2 reads of a depthwise conv reuse the rest of a sector from L1 in a later request).

Shapes: the depthwise layers and SE shapes of benchmarks/bench_dwconv_bn_act.py and
bench_squeeze_excite.py, ShuffleNet shapes, ViT attention, at batch 2 (batch 1 for attention).

    python tools/cuda_emu/traffic.py                  # every case: markdown on stdout
    python tools/cuda_emu/traffic.py --out DIR        # also DIR/traffic.md and .json
    python tools/cuda_emu/traffic.py --quick --check  # a subset, checked against BUDGETS

--check fails when a case's DRAM estimate exceeds its floor by more than its op's budget (an extra
pass over a tensor, a scratch round trip) or its coalescing falls under the op's minimum (an access
pattern that strides across sectors). python_tests/test_cuda_emulated.py runs the --quick --check.
Run it without AddressSanitizer preloaded: the ASan runtime defines the hooks' names too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import build  # noqa: E402
from bench_dwconv_bn_act import LAYERS as DW_LAYERS  # noqa: E402
from bench_squeeze_excite import SHAPES as SE_SHAPES  # noqa: E402
from torchcv_ext.ops.reference import dwconv_bn_act as ref_dw  # noqa: E402

CL = torch.channels_last
NCHW = torch.contiguous_format
SECTOR = 32

# Per op: the most a case's DRAM estimate may exceed its floor (ratio) and the least coalescing of
# its loads and stores: the 2026-12-02 table's worst case of the op with some room. A kernel change
# that moves a case past them is a regression to look at (or, in review, a reason to change the
# number here).
BUDGETS = {
    "dwconv_bn_act eval": dict(ratio=1.15, load=0.28, store=0.65),
    # stats (read x, write z), scale_shift_act (z -> y), its backward's sums (dy, z), the conv
    # backward in one kernel (dy, z, x -> dx and the weight gradient, z's gradient applied on
    # the fly): 10 passes over a stride-1 layer's activations where the floor counts 5 (13 when
    # the input and weight gradients were two kernels and dz was written). Store coalescing: dx
    # and y are coalesced; what pulls the figure down are the per-block partial sums (one value
    # per channel and block, strided by the block count: few bytes).
    "dwconv_bn_act train fwd+bwd": dict(ratio=2.45, load=0.40, store=0.33),
    "squeeze_excite fwd": dict(ratio=1.08, load=0.78, store=0.65),
    "squeeze_excite fwd+bwd": dict(ratio=1.08, load=0.80, store=0.55),
    "channel_shuffle": dict(ratio=1.02, load=0.45, store=0.95),
    "shuffle_cat_split": dict(ratio=1.02, load=0.45, store=0.55),
    "hardswish fwd+bwd": dict(ratio=1.02, load=0.95, store=0.95),
    # Compute-bound at vision lengths; the numbers document the kernels' access patterns (the
    # fp32 kernels store one float per lane and row).
    "attention fwd": dict(ratio=1.05, load=0.95, store=0.10),
    "attention fwd+bwd": dict(ratio=1.50, load=0.95, store=0.10),
}


@dataclasses.dataclass
class Case:
    op: str
    label: str
    run: Callable[[], object]
    floor: int  # bytes
    launches: Optional[list] = None
    seconds: float = 0.0

    def total(self, key: str, direction: str) -> int:
        return sum(launch[direction][key] for launch in self.launches)

    @property
    def dram(self) -> int:
        return SECTOR * (self.total("unique", "load") + self.total("unique", "store"))

    def coalescing(self, direction: str) -> float:
        sectors = self.total("sectors", direction)
        return self.total("ideal", direction) / sectors if sectors else 1.0


def nbytes(*ts) -> int:
    return sum(t.nbytes for t in ts if t is not None)


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _layout_name(mf) -> str:
    return "channels_last" if mf is CL else "nchw"


def dwconv_cases(E, quick: bool, n: int = 2) -> List[Case]:
    out = []
    layers = [DW_LAYERS[i] for i in ((1, 4, 7) if quick else range(len(DW_LAYERS)))]
    # train fwd+bwd (slower to emulate) on a stride-2 layer, and in full mode a stride-1 one too
    train_layers = {"mnv3 b3"} if quick else {"mnv3 b5", "mnv3 b6", "effb0 s6"}
    for name, c, h, k, s, act in layers:
        for dt in ((torch.bfloat16,) if quick else (torch.float32, torch.bfloat16)):
            for mf in (NCHW, CL):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(n, c, h, h, generator=g).to(dt).contiguous(memory_format=mf)
                w = (torch.randn(c, 1, k, k, generator=g) * 0.3).to(dt)
                sc, sh = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
                p = (k - 1) // 2
                conv = ([s, s], [p, p], [1, 1])
                ho = (h + 2 * p - k) // s + 1
                y_bytes = n * c * ho * ho * x.element_size()
                label = f"{name} N{n} C{c} {h}x{h} k{k} s{s} {act} {_dtype_name(dt)} {_layout_name(mf)}"
                params = nbytes(w, sc, sh)
                out.append(Case("dwconv_bn_act eval", label,
                                lambda x=x, w=w, sc=sc, sh=sh, conv=conv, act=act:
                                E.dwconv_bn_act(x, w, sc, sh, *conv, act),
                                x.nbytes + y_bytes + params))
                if name not in train_layers:
                    continue
                gy = torch.randn(n, c, ho, ho, generator=g).to(dt).contiguous(memory_format=mf)
                gm, gv = torch.randn(c, generator=g), torch.randn(c, generator=g)

                def train(x=x, w=w, sc=sc, sh=sh, conv=conv, act=act, gy=gy, gm=gm, gv=gv):
                    # what dwconv_bn_act_train and its autograd backward launch (sc, sh: BN's
                    # gamma and beta; the per-channel math between the ops is left out)
                    _, mean, var, z = E.dwconv_bn_act_train(x, w, sc, sh, 1e-5, *conv, act)
                    scale, _ = ref_dw.batch_scale_shift(var, sc, sh, 1e-5)
                    E._scale_shift_act_backward(gy, z, scale, sh, act, mean, False)
                    return E._dwconv_bn_stats_backward(gy, gm, gv, x, z, mean, w, *conv, scale, sh, act)

                # the benchmark's floor: read x, write y, read dy, read x again, write dx
                out.append(Case("dwconv_bn_act train fwd+bwd", label, train,
                                3 * x.nbytes + 2 * y_bytes + 2 * params))
    return out


def se_cases(E, quick: bool, n: int = 2) -> List[Case]:
    out = []
    acts = {"SiLU": "silu", "ReLU": "relu", "Sigmoid": "sigmoid", "Hardsigmoid": "hardsigmoid"}
    shapes = [SE_SHAPES[i] for i in ((1, 4) if quick else range(len(SE_SHAPES)))]
    for name, c, sq, h, act_cls, gate_cls in shapes:
        act, gate = acts[act_cls.__name__], acts[gate_cls.__name__]
        for dt in ((torch.bfloat16,) if quick else (torch.float32, torch.bfloat16)):
            for mf in (NCHW, CL):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(n, c, h, h, generator=g).to(dt).contiguous(memory_format=mf)
                gy = torch.randn(n, c, h, h, generator=g).to(dt).contiguous(memory_format=mf)
                ps = [(torch.randn(sq, c, generator=g) * 0.1).to(dt), torch.randn(sq, generator=g).to(dt),
                      (torch.randn(c, sq, generator=g) * 0.1).to(dt), torch.randn(c, generator=g).to(dt)]
                label = f"{name} N{n} C{c} sq{sq} {h}x{h} {act}/{gate} {_dtype_name(dt)} {_layout_name(mf)}"
                out.append(Case("squeeze_excite fwd", label,
                                lambda x=x, ps=ps, act=act, gate=gate: E.squeeze_excite(x, *ps, act, gate),
                                3 * x.nbytes + nbytes(*ps)))

                def fwd_bwd(x=x, gy=gy, ps=ps, act=act, gate=gate):
                    E.squeeze_excite(x, *ps, act, gate)
                    return E._squeeze_excite_backward(gy, x, *ps, act, gate)

                # the benchmark's floor (7 passes over x), parameters read twice and written once
                out.append(Case("squeeze_excite fwd+bwd", label, fwd_bwd, 7 * x.nbytes + 3 * nbytes(*ps)))
    return out


def elementwise_cases(E, quick: bool, n: int = 2) -> List[Case]:
    out = []
    shapes = [(116, 28, 2), (232, 14, 2), (240, 28, 3)]
    for c, h, groups in shapes[:1] if quick else shapes:
        for dt in ((torch.bfloat16,) if quick else (torch.float32, torch.bfloat16)):
            for mf in (NCHW, CL):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(n, c, h, h, generator=g).to(dt).contiguous(memory_format=mf)
                label = f"N{n} C{c} {h}x{h} g{groups} {_dtype_name(dt)} {_layout_name(mf)}"
                out.append(Case("channel_shuffle", label, lambda x=x, groups=groups: E.channel_shuffle(x, groups),
                                2 * x.nbytes))
                if groups == 2:  # ShuffleNetV2: the two branches' outputs in, the next block's halves out
                    a, b = x[:, : c // 2], x[:, c // 2:]
                    out.append(Case("shuffle_cat_split", label, lambda a=a, b=b: E.shuffle_cat_split(a, b),
                                    2 * x.nbytes))
                gy = torch.randn(x.shape, generator=g).to(dt).contiguous(memory_format=mf)

                def hs(x=x, gy=gy):
                    E.activation(x, "hardswish")
                    return E._activation_backward(gy, x, "hardswish")

                out.append(Case("hardswish fwd+bwd", label, hs, 5 * x.nbytes))
    return out


def attention_cases(E, quick: bool) -> List[Case]:
    out = []
    shapes = [(1, 2, 197, 64)] if quick else [(1, 2, 197, 64), (1, 2, 197, 32), (1, 1, 197, 128)]
    for b, h, n, d in shapes:
        for dt in ((torch.bfloat16,) if quick else (torch.bfloat16, torch.float32)):
            g = torch.Generator().manual_seed(0)
            q, k, v, go = (torch.randn(b, h, n, d, generator=g).to(dt) for _ in range(4))
            lse_bytes = b * h * n * 4
            label = f"B{b} H{h} N{n} D{d} {_dtype_name(dt)}"
            out.append(Case("attention fwd", label, lambda q=q, k=k, v=v: E.attention(q, k, v, None),
                            4 * q.nbytes + lse_bytes))

            def fwd_bwd(q=q, k=k, v=v, go=go):
                o, lse = E.attention(q, k, v, None)
                return E._attention_backward(go, q, k, v, o, lse, None)

            # forward floor, then read q, k, v, o, do, lse and write dq, dk, dv
            out.append(Case("attention fwd+bwd", label, fwd_bwd, 4 * q.nbytes + lse_bytes + 8 * q.nbytes + lse_bytes))
    return out


def measure(E, case: Case) -> None:
    E._emu_traffic(True)
    t = time.perf_counter()
    case.run()
    case.seconds = time.perf_counter() - t
    case.launches = json.loads(E._emu_traffic(True))


def self_test(E) -> None:
    """The model on kernels of known pattern (emu_selftest.cu): 64 threads, 2 warps, 4-byte loads."""
    expect = {"copy_coalesced": (8, 8, 8), "copy_strided": (16, 8, 16), "copy_broadcast": (2, 2, 1)}
    for which, (sectors, ideal, unique) in expect.items():
        E._emu_traffic(True)
        E._emu_selftest(torch.empty(0), which)
        (launch,) = json.loads(E._emu_traffic(True))
        got = launch["load"]
        assert (got["requests"], got["sectors"], got["ideal"], got["unique"]) == (2, sectors, ideal, unique), \
            f"traffic model self-test {which}: {got}"
        assert (launch["store"]["sectors"], launch["store"]["ideal"]) == (8, 8), f"{which}: {launch['store']}"


def violations(cases: List[Case]) -> List[str]:
    bad = []
    for c in cases:
        b = BUDGETS[c.op]
        ratio = c.dram / c.floor
        if ratio > b["ratio"]:
            bad.append(f"{c.op} {c.label}: DRAM estimate {ratio:.2f}x the floor > budget {b['ratio']}")
        for direction in ("load", "store"):
            if c.coalescing(direction) < b[direction]:
                bad.append(f"{c.op} {c.label}: {direction} coalescing {c.coalescing(direction):.2f} "
                           f"< budget {b[direction]}")
    return bad


def markdown(cases: List[Case]) -> str:
    lines = ["| op | case | kernels | DRAM est. MB | floor MB | x floor | load coalescing | store coalescing |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        kernels = ", ".join(dict.fromkeys(launch["kernel"].split("<")[0] for launch in c.launches))
        lines.append(f"| {c.op} | {c.label} | {kernels} | {c.dram / 1e6:.3f} | {c.floor / 1e6:.3f} | "
                     f"{c.dram / c.floor:.2f} | {c.coalescing('load'):.2f} | {c.coalescing('store'):.2f} |")
    return "\n".join(lines) + "\n"


def kernel_markdown(cases: List[Case]) -> str:
    """Per kernel (as spelled at its launch), over every case that launched it."""
    agg = {}
    for c in cases:
        for launch in c.launches:
            a = agg.setdefault(launch["kernel"], {"launches": 0, "load": [0, 0, 0], "store": [0, 0, 0]})
            a["launches"] += 1
            for direction in ("load", "store"):
                for i, key in enumerate(("requests", "sectors", "ideal")):
                    a[direction][i] += launch[direction][key]
    lines = ["| kernel | launches | load requests | sectors / load request | load coalescing | "
             "store requests | sectors / store request | store coalescing |", "|---|---|---|---|---|---|---|---|"]
    for name, a in sorted(agg.items()):
        cells = []
        for direction in ("load", "store"):
            req, sec, ideal = a[direction]
            cells += [str(req), f"{sec / req:.1f}" if req else "-", f"{ideal / sec:.2f}" if sec else "-"]
        lines.append(f"| `{name}` | {a['launches']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(cases: List[Case]) -> list:
    return [dict(op=c.op, case=c.label, floor_bytes=c.floor, dram_bytes=c.dram, seconds=round(c.seconds, 2),
                 launches=c.launches) for c in cases]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset of the cases (CI)")
    ap.add_argument("--check", action="store_true", help="fail on a case over its op's BUDGETS")
    ap.add_argument("--out", help="write traffic.md and traffic.json here")
    ap.add_argument("--op", action="append", default=[],
                    help="only the cases whose op contains this text (repeatable), e.g. 'train'")
    args = ap.parse_args(argv)
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        ap.error("run without AddressSanitizer preloaded (its runtime defines the same hooks)")
    build.build(flavor="traffic")
    E = torch.ops.torchcv_ext_emu
    self_test(E)
    cases = (dwconv_cases(E, args.quick) + se_cases(E, args.quick) + elementwise_cases(E, args.quick)
             + attention_cases(E, args.quick))
    if args.op:
        cases = [c for c in cases if any(o in c.op for o in args.op)]
    t0 = time.perf_counter()
    for c in cases:
        measure(E, c)
    table = markdown(cases) + "\n" + kernel_markdown(cases)
    print(table)
    print(f"{len(cases)} cases in {time.perf_counter() - t0:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "traffic.md"), "w") as f:
            f.write(table)
        with open(os.path.join(args.out, "traffic.json"), "w") as f:
            json.dump(to_json(cases), f, indent=1)
    bad = violations(cases)
    for line in bad:
        print("OVER BUDGET:", line)
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
