"""Model zoo built from torchcv_ext.nn blocks: ``list_models()``,
``create_model(name, num_classes=None, in_chans=None)`` (None: the builder's own default).

Where torchvision has the model (alexnet, resnet*, vgg*, googlenet, inception_v3, mobilenet_v2/v3,
shufflenet_v2_*, efficientnet_b*), module and parameter names are torchvision's: its state_dict
loads with ``strict=True`` and gives the same outputs. Every model has a ``features`` backbone, a classifier
head (``classifier``, ``fc`` or ``head``), ``reset_classifier(num_classes)`` and
``freeze_backbone()`` for transfer learning.
"""
from torchcv_ext.models._registry import create_model, is_model, list_models, model_entrypoint, register_model
from torchcv_ext.models import (  # noqa: F401
    alexnet, efficientnet, googlenet, hybridsn, inception, lenet, mobilenet, resnet, shufflenet, vgg, vit)
from torchcv_ext.models.alexnet import AlexNet
from torchcv_ext.models.efficientnet import EfficientNet
from torchcv_ext.models.googlenet import GoogLeNet, GoogLeNetOutputs
from torchcv_ext.models.hybridsn import HybridSN
from torchcv_ext.models.inception import Inception3, InceptionOutputs
from torchcv_ext.models.lenet import LeNet
from torchcv_ext.models.mobilenet import MobileNetV1, MobileNetV2, MobileNetV3
from torchcv_ext.models.resnet import ResNet
from torchcv_ext.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from torchcv_ext.models.vgg import VGG
from torchcv_ext.models.vit import VisionTransformer

__all__ = [
    "register_model", "list_models", "create_model", "is_model", "model_entrypoint",
    "AlexNet", "EfficientNet", "GoogLeNet", "GoogLeNetOutputs", "HybridSN", "Inception3", "InceptionOutputs",
    "LeNet", "MobileNetV1", "MobileNetV2", "MobileNetV3", "ResNet", "ShuffleNetV1", "ShuffleNetV2", "VGG",
    "VisionTransformer",
]
