"""The GPU suite (benchmarks/gpu_suite.sh) rehearsed on the CPU: its report is written as it goes,
so a command killed midway still leaves one that names the phase it cut; and its kernel case
matrix (benchmarks/check_kernels.py over python_tests/kernel_cases.py) run on the CPU kernels."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import torchcv_ext
from testing import requires_ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.sh")


def _suite(out, budget):
    env = dict(os.environ, GPU_SUITE_REHEARSAL="1", OUT=str(out), SUITE_BUDGET_S=str(budget),
               PYTHON=sys.executable,
               # the torchcv_ext under test (installed, or the source tree's in-place build)
               PYTHONPATH=os.path.dirname(os.path.dirname(torchcv_ext.__file__)))
    return subprocess.Popen(["bash", SUITE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _phases(out):
    try:
        with open(os.path.join(out, "results.json")) as f:
            return {p["phase"]: p["status"] for p in json.load(f)["phases"]}
    except (OSError, ValueError):
        return {}


@requires_ext
def test_rehearsal_killed_midway_leaves_a_report(tmp_path):
    proc = _suite(tmp_path, budget=300)
    try:
        deadline = time.time() + 240
        while not _phases(tmp_path).get("smoke", "").startswith("CUT") and proc.poll() is None:
            assert time.time() < deadline, "the smoke phase never started"
            time.sleep(0.05)
        assert proc.poll() is None, "the rehearsal ended before it could be killed in its smoke phase"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as the device tool does at its limit
        proc.wait()
    report = (tmp_path / "report.md").read_text()
    assert "INCOMPLETE" in report and "while phase `smoke` ran" in report
    phases = _phases(tmp_path)
    assert phases["env"] == "passed"
    assert phases["build"].startswith("skipped (rehearsal")
    assert phases["smoke"].startswith("CUT")
    assert {phases[p] for p in ("tests", "bench", "sanitize", "compile")} == {"not reached"}
    with tarfile.open(tmp_path / "logs.tar.gz") as t:
        assert "./env.log" in t.getnames()
    assert sorted(os.listdir(tmp_path)) == ["logs.tar.gz", "report.md", "results.json"]


@requires_ext
def test_rehearsal_within_budget_finishes_with_a_report(tmp_path):
    """A tiny budget: the phases that no longer fit are recorded as skipped, and the report says
    the suite finished."""
    proc = _suite(tmp_path, budget=20)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()
    with open(tmp_path / "results.json") as f:
        res = json.load(f)
    assert res["finished"] and res["rehearsal"] and res["budget_s"] == 20
    phases = {p["phase"]: p["status"] for p in res["phases"]}
    assert list(phases) == ["env", "build", "smoke", "tests", "bench", "sanitize", "compile"]
    assert phases["env"] in ("passed", "TIMEOUT (stopped at its limit)")
    assert phases["smoke"] in ("passed", "skipped (budget spent)")
    assert all(phases[p].startswith("skipped") for p in ("tests", "bench", "sanitize", "compile"))
    assert "GPU suite summary (finished" in out.decode()


@requires_ext
def test_kernel_case_matrix_on_the_cpu(capsys):
    """Every case of the matrix that the GPU suite runs on CUDA (and under compute-sanitizer), on the
    CPU kernels through the public ops, forward and backward vs float64."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import check_kernels

    assert check_kernels.main(["--device", "cpu"]) == 0, capsys.readouterr().out
    assert check_kernels.PASSED[0] > 200
    with pytest.raises(SystemExit):
        check_kernels.main(["--device", "cpu", "--ops", "nope"])
