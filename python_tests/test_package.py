"""Package plumbing: loader, build info, python -m torchcv_ext.info."""
import json

import torch

import torchcv_ext
from torchcv_ext import _loader, info
from testing import run_python


def test_version_mismatch_message():
    assert _loader.version_mismatch("2.14.1+cu130", "2.14.0+cu130") is None
    msg = _loader.version_mismatch("2.14.1+cu130", "2.11.0+cu130")
    assert "compiled against torch 2.14.1+cu130" in msg and "2.11.0+cu130" in msg
    assert "pip install" in msg
    assert _loader.version_mismatch("2.14.1+cu130", "2.14.1+cpu") is not None


def test_build_info_matches_running_torch():
    if not torchcv_ext.extension_loaded():
        assert _loader.LOAD_ERROR
        return
    assert _loader.BUILD_INFO["torch_version"].split("+")[0].split(".")[:2] == \
        torch.__version__.split("+")[0].split(".")[:2]
    assert _loader._C.__version__ == torchcv_ext.__version__
    assert bool(_loader._C.cuda_compiled) == _loader.BUILD_INFO["cuda"]


def test_info_cli_json(tmp_path):
    doc = json.loads(run_python(["-m", "torchcv_ext.info", "--json"], tmp_path))
    assert doc["location"] == torchcv_ext.__file__
    assert doc["torchcv_ext"] == torchcv_ext.__version__
    assert doc["extension_loaded"] == torchcv_ext.extension_loaded()
    if torchcv_ext.extension_loaded():
        assert doc["backends"]["channel_shuffle"]["CPU"] == "C++ kernel"


def test_arch_coverage_rule():
    assert info._covers("9.0", "9.0") and info._covers("9.0a", "9.0")
    assert not info._covers("8.0", "9.0")
    assert info._covers("8.6+PTX", "9.0") and not info._covers("9.0+PTX", "8.6")


def test_import_does_not_initialize_cuda(tmp_path):
    code = "import torch, torchcv_ext; print(torch.cuda.is_initialized())"
    assert run_python(["-c", code], tmp_path).strip() == "False"
