"""torchcv_ext: fused CUDA/C++ kernels and efficient CNNs for PyTorch.

    torchcv_ext.ops      functional fused ops (torch.ops.torchcv_ext.* with autograd and fake kernels)
    torchcv_ext.nn       drop-in modules (torchvision layer names, so torchvision weights load)
    torchcv_ext.models   networks and their registry (list_models, create_model)
    torchcv_ext.export   deployment: ONNX, ATen-only decompositions, the shared library's path
    python -m torchcv_ext.info   versions, compiled kernels and the backend each op uses
"""
from torchcv_ext import _loader
from torchcv_ext._loader import cuda_kernels_compiled, extension_loaded
from torchcv_ext import ops, nn  # noqa: E402  (after the loader registered the ops)
from torchcv_ext import models  # noqa: E402
from torchcv_ext.convert import convert  # noqa: E402
from torchcv_ext import export  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "nn", "models", "export", "convert", "extension_loaded", "cuda_kernels_compiled", "__version__"]
