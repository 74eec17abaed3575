"""torch.distributed with the fused modules: convert_sync_batchnorm, DDP, torch.compile + DDP, and
the training example under torchrun.

Multi-process tests start 2 real processes (torch.multiprocessing.spawn) joined in a gloo group
through a FileStore in tmp_path (no ports: xdist-safe), one thread each; ``run_ranks`` is the one
spawn helper. Single-process references run in the test process.

Tolerance of "the same as one process": float32 results after a few SGD steps agree to
``atol=2e-5, rtol=1e-4`` (the two sides differ only in float rounding: the fused train kernels
vs conv -> synced BN -> activation, and summation order); float64 runs agree to 1e-10.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import torchcv_ext
from torchcv_ext import data, distributed, models
from torchcv_ext.nn import (DWConvBNAct, FusedSequential, InvertedResidual, SyncBatchNorm1d, SyncBatchNorm2d,
                            convert_sync_batchnorm)
from testing import DEVICES

TOL32 = dict(atol=2e-5, rtol=1e-4)
TOL64 = dict(atol=1e-10, rtol=1e-8)
STEPS = 3


# ---------------------------------------------------------------------------------------------
# The spawn helper
# ---------------------------------------------------------------------------------------------
def _rank_main(rank: int, world_size: int, tmp: str, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size)
    try:
        out = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))


def run_ranks(fn, tmp_path, *args, world_size: int = 2) -> list:
    """``fn(rank, world_size, *args)`` in ``world_size`` new processes of one gloo group; returns
    what each rank's call returned, by rank. A failure in any rank fails the test with its traceback."""
    mp.spawn(_rank_main, args=(world_size, str(tmp_path), fn, args), nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


# ---------------------------------------------------------------------------------------------
# A small network of fused layers, and SGD on it
# ---------------------------------------------------------------------------------------------
def tiny_net(dtype=torch.float32) -> nn.Module:
    """FusedSequential (dense conv + BN + ReLU), DWConvBNAct, an MBConv block (expand, depthwise,
    squeeze-excite, project, residual) and a BatchNorm1d head: every kind of BN we fuse."""
    torch.manual_seed(0)
    return nn.Sequential(
        FusedSequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
        DWConvBNAct(8, 3, stride=2, activation="hardswish"),
        InvertedResidual(8, 8, 1, 16, activation=nn.Hardswish, squeeze_channels=8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8), nn.Linear(8, 4),
    ).to(dtype)


def batch(sizes, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    x = torch.randn(STEPS, n, 3, 12, 12, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 4, (STEPS, n), generator=g)
    return x, y


def sgd(model: nn.Module, step_loss, run=None, lr: float = 0.2) -> dict:
    """STEPS steps of SGD (momentum) on ``step_loss(run, step)``, ``run`` calling ``model`` (DDP,
    torch.compile; default ``model`` itself); ``model``'s final state_dict (on the CPU)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        step_loss(model if run is None else run, step).backward()
        opt.step()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def chunk_losses(out, y, sizes):
    """What DDP optimizes: the mean over ranks of each rank's mean cross-entropy."""
    losses = [nn.functional.cross_entropy(o, t) for o, t in zip(out.split(list(sizes)), y.split(list(sizes)))]
    return sum(losses) / len(losses)


def single_process(sizes, dtype=torch.float32) -> dict:
    x, y = batch(sizes, dtype)
    return sgd(tiny_net(dtype), lambda m, s: chunk_losses(m(x[s]), y[s], sizes))


def _ddp_sgd(rank, world_size, sizes, sync, dtype=torch.float32, device="cpu"):
    x, y = batch(sizes, dtype)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    model = tiny_net(dtype)
    if sync:
        model = convert_sync_batchnorm(model)
    model = model.to(device)
    # broadcast_buffers=False: rank 0's running statistics are not copied to the others, so each
    # rank's own must come out equal.
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    return sgd(model, lambda m, s: nn.functional.cross_entropy(m(x[s, lo:hi].to(device)), y[s, lo:hi].to(device)),
               ddp)


SCENARIOS = {"even-float32": ((4, 4), torch.float32), "uneven-float32": ((5, 3), torch.float32),
             "uneven-float64": ((6, 2), torch.float64)}


def _worker_scenarios(rank, world_size):
    """Every scenario of the tests below in one pair of processes (starting two processes that
    import torch costs more than all of the scenarios' steps)."""
    out = {name: {"sync": _ddp_sgd(rank, world_size, sizes, True, dtype),
                  "plain": _ddp_sgd(rank, world_size, sizes, False, dtype)}
           for name, (sizes, dtype) in SCENARIOS.items()}
    out["empty rank"] = _bn_with_an_empty_rank(rank)
    out["ours vs torchvision"] = _ours_and_torchvision(rank)
    return out


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    return run_ranks(_worker_scenarios, tmp_path_factory.mktemp("scenarios"))


def _assert_states_close(got: dict, expected: dict, tol, what: str):
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], **tol, msg=lambda m: f"{what}: {k}: {m}")


def _max_running_stat_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if "running_" in k)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sync_bn_ddp_equals_one_process_on_the_whole_batch(scenarios, name):
    """SGD steps with DDP and convert_sync_batchnorm over 2 processes, each with its part of the
    batch (uneven parts too), give the parameters and running statistics (on every rank, bitwise
    the same) of one process on the whole batch; without sync BN they do not."""
    sizes, dtype = SCENARIOS[name]
    ranks = [r[name] for r in scenarios]
    ref = single_process(sizes, dtype)
    tol = TOL64 if dtype == torch.float64 else TOL32
    for r, res in enumerate(ranks):
        _assert_states_close(res["sync"], ref, tol, f"rank {r} with sync BN")
    for k in ranks[0]["sync"]:
        assert torch.equal(ranks[0]["sync"][k], ranks[1]["sync"][k]), k
    # The comparison can fail: each rank's own batch statistics are far from the global ones.
    assert _max_running_stat_diff(ranks[0]["plain"], ref) > 100 * tol["atol"]


def _bn_with_an_empty_rank(rank):
    """Rank 1 has no samples: rank 0's output and gradients are those of plain BN on its batch."""
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = (x if rank == 0 else x[:0]).requires_grad_()
    bn = convert_sync_batchnorm(nn.BatchNorm2d(4).double())
    assert isinstance(bn, SyncBatchNorm2d)
    y = bn(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad, "mean": bn.running_mean, "var": bn.running_var}


def test_sync_bn_with_an_empty_rank(scenarios):
    r0, r1 = (r["empty rank"] for r in scenarios)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_()
    bn = nn.BatchNorm2d(4).double()
    y = bn(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    for got, expected in ((r0["y"], y), (r0["dx"], x.grad), (r0["dw"], bn.weight.grad),
                          (r0["mean"], bn.running_mean), (r0["var"], bn.running_var),
                          (r1["mean"], bn.running_mean), (r1["var"], bn.running_var)):
        torch.testing.assert_close(got, expected, **TOL64)
    assert r1["y"].shape == (0, 4, 5, 5) and r1["dw"].abs().max() == 0


# ---------------------------------------------------------------------------------------------
# DDP over our model vs DDP over torchvision's
# ---------------------------------------------------------------------------------------------
def _ours_and_torchvision(rank):
    import torchvision

    tv = torchvision.models.mobilenet_v3_small(num_classes=10)
    ours = models.create_model("mobilenet_v3_small", num_classes=10)
    ours.load_state_dict(tv.state_dict())
    g = torch.Generator().manual_seed(10 + rank)  # each rank its own data
    x, y = torch.randn(STEPS, 4, 3, 32, 32, generator=g), torch.randint(0, 10, (STEPS, 4), generator=g)
    out = {}
    for name, model in (("ours", ours), ("torchvision", tv)):
        torch.manual_seed(rank)  # the same dropout masks for both
        ddp = nn.parallel.DistributedDataParallel(model)
        # (a small step: MobileNetV3 at lr 0.2 turns float rounding into 1e-2 differences in 3 steps)
        out[name] = sgd(model, lambda m, s: nn.functional.cross_entropy(m(x[s]), y[s]), ddp, lr=0.02)
    return out


def test_ddp_over_our_model_equals_ddp_over_torchvision(scenarios):
    ranks = [r["ours vs torchvision"] for r in scenarios]
    for r, res in enumerate(ranks):
        _assert_states_close(res["ours"], res["torchvision"], TOL32, f"rank {r}")
    for k, v in ranks[0]["ours"].items():  # DDP: the same parameters on both ranks (BN buffers: each its own)
        if "running_" not in k:
            torch.testing.assert_close(v, ranks[1]["ours"][k], atol=0, rtol=0, msg=k)
    start = torchcv_ext.models.create_model("mobilenet_v3_small", num_classes=10).state_dict()
    assert not torch.equal(ranks[0]["ours"]["classifier.3.weight"], start["classifier.3.weight"])


# ---------------------------------------------------------------------------------------------
# torch.compile + DDP
# ---------------------------------------------------------------------------------------------
def _worker_compiled(rank, world_size, sizes):
    x, y = batch(sizes)
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    out = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = convert_sync_batchnorm(tiny_net())
        ddp = nn.parallel.DistributedDataParallel(model)
        # aot_eager: dynamo's graphs (split at DDP's buckets and around the collectives of sync BN)
        # through AOTAutograd, with the fused ops' fake kernels; inductor's code generation is
        # tested elsewhere (test_models) and takes ~1 min on 2 cores here.
        f = torch.compile(ddp, backend="aot_eager") if compiled else ddp
        out[compiled] = sgd(model, lambda m, s: nn.functional.cross_entropy(m(x[s, lo:hi]), y[s, lo:hi]), f)
    return out


@pytest.mark.slow  # dynamo + AOTAutograd in two processes: ~30 s of CPU
def test_torch_compile_with_ddp_and_sync_bn(tmp_path):
    sizes = (4, 4)
    ranks = run_ranks(_worker_compiled, tmp_path, sizes)
    ref = single_process(sizes)
    for r, res in enumerate(ranks):
        _assert_states_close(res[True], res[False], TOL32, f"rank {r}: compiled vs eager")
        _assert_states_close(res[True], ref, TOL32, f"rank {r}: compiled vs one process")


# ---------------------------------------------------------------------------------------------
# convert_sync_batchnorm in one process
# ---------------------------------------------------------------------------------------------
def test_convert_sync_batchnorm_in_one_process_changes_nothing(monkeypatch):
    """Same state_dict keys and tensors (shared), same outputs bitwise in train and eval mode, and
    the fused train kernel still runs: without a process group a synced BN is its BatchNorm."""
    import torchcv_ext.ops

    # The C++ train kernels, which "auto" takes only on AVX-512 CPUs (ops/dwconv_bn_act.py: backend).
    monkeypatch.setattr(torchcv_ext.ops.config, "dwconv_cpu_train_backend", "kernels")
    plain, synced = tiny_net(), convert_sync_batchnorm(tiny_net())
    assert plain.state_dict().keys() == synced.state_dict().keys()
    kinds = {type(m) for m in synced.modules()}
    assert SyncBatchNorm2d in kinds and SyncBatchNorm1d in kinds and nn.BatchNorm2d not in kinds
    assert isinstance(synced[1].bn, nn.BatchNorm2d)  # still a BatchNorm2d for isinstance checks
    x = torch.randn(4, 3, 12, 12)
    with torch.profiler.profile() as prof:
        y_sync = synced(x)
    assert any("dwconv_bn_act_train" in e.name for e in prof.events())
    assert torch.equal(plain(x), y_sync)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, synced.state_dict()[k]), k
    plain.eval(), synced.eval()
    assert torch.equal(plain(x), synced(x))


def test_convert_sync_batchnorm_shares_tensors_and_rejects_unknown_bn():
    bn = nn.BatchNorm2d(4)
    m = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(2, 4, 1), bn))
    assert m[1].weight is bn.weight and m[1].running_mean is bn.running_mean

    class MyBN(nn.BatchNorm2d):
        pass

    with pytest.raises(TypeError, match=r"1 is a MyBN, a BatchNorm subclass"):
        convert_sync_batchnorm(nn.Sequential(nn.Conv2d(2, 4, 1), MyBN(4)))
    torch_sync = nn.SyncBatchNorm(4)
    assert convert_sync_batchnorm(nn.Sequential(torch_sync))[0] is torch_sync


# ---------------------------------------------------------------------------------------------
# CUDA: torch's SyncBatchNorm function on CUDA tensors (both ranks on one GPU, gloo)
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_sync_bn_ddp_on_cuda(tmp_path):
    sizes = (5, 3)
    ranks = run_ranks(_ddp_sgd, tmp_path, sizes, True, torch.float32, "cuda")
    ref = single_process(sizes)
    for r, res in enumerate(ranks):
        _assert_states_close(res, ref, dict(atol=1e-4, rtol=1e-3), f"rank {r}")


# ---------------------------------------------------------------------------------------------
# The training example under torchrun
# ---------------------------------------------------------------------------------------------
def test_launch_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SystemExit, match="start the processes with torchrun"):
        distributed.init("cpu")
    ctx = distributed.Context(torch.device("cpu"), rank=0, world_size=4)
    with pytest.raises(SystemExit, match="4 processes but only 3 training images"):
        distributed.train_sampler(torch.utils.data.TensorDataset(torch.zeros(3)), ctx, seed=0)
    # Validation slices: disjoint, every item once (no padding).
    ds = torch.utils.data.TensorDataset(torch.arange(7))
    parts = [distributed.shard(ds, distributed.Context(torch.device("cpu"), r, 3)) for r in range(3)]
    assert sorted(int(p[i][0]) for p in parts for i in range(len(p))) == list(range(7))


def _torchrun(args, cwd) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(torchcv_ext.__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "torchcv_ext.train", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.slow  # ~20-30 s on 2 cores: torchrun and two processes importing torch
def test_torchrun_train_with_sync_bn_resumes_at_another_world_size(tmp_path):
    """Epoch 1 in one process, epoch 2 resumed under torchrun on 2 processes with --sync-bn, epoch 3
    resumed in one process again: the run continues (history, checkpoint), rank 0 alone prints and
    writes, and the validation accuracy counts each of the 61 validation images exactly once."""
    from torchcv_ext import train

    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    common = ["--no-progress", "--batch-size", "32", "--out", str(out)]
    first = train.main(["--model", "shufflenet_v2_x0_5", "--limit", "305", "--epochs", "1", *common])
    r = _torchrun(["--resume", str(out / "last.pt"), "--epochs", "2", "--sync-bn", *common], tmp_path)
    assert len(re.findall(r"epoch +2/2", r.stdout)) == 1, r.stdout  # printed by rank 0 only
    assert "2 processes (gloo)" in r.stdout and "sync BN" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == first["history"][0]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2
    n_val = 61  # 20% of 305: odd, so a padding sampler would count one image twice
    acc = metrics["history"][1]["val_acc"]
    assert abs(acc * n_val - round(acc * n_val)) < 1e-6, acc
    # The checkpoint (plain state_dict names) evaluated in one process gives that accuracy.
    model = models.create_model("shufflenet_v2_x0_5", num_classes=10)
    model.load_state_dict(ckpt["model"])
    val_ds = data.load_datasets("digits", None, data.LoadOptions(img_size=32, limit=305)).val
    with torch.no_grad():
        x, y = val_ds.tensors
        correct = (model.eval()(x).argmax(1) == y).sum().item()
    assert abs(correct - acc * n_val) <= 1  # (float rounding may flip one close call)

    third = train.main(["--resume", str(out / "last.pt"), "--epochs", "3", *common])
    assert [h["epoch"] for h in third["history"]] == [1, 2, 3] and "world_size" not in third
