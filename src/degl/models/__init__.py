"""Backbones as lists of blocks, single-device, no training code.

Registered models build their blocks by hand; any other ``nn.Module`` (``torchvision:NAME``, a
function in the user's file) is traced and cut at its natural block boundaries (:func:`trace_backbone`).
"""

from degl.models import (  # noqa: F401  (importing a family registers its models)
    cifar,
    dni_cnn,
    greedynet,
    resnet_cifar,
    resnet_imagenet,
    vgg,
)
from degl.models.heads import AUX_KINDS, TOKEN_KINDS, build_head
from degl.models.registry import Backbone, build_model, list_models, model_entry, register_model
from degl.models.traced import trace_backbone

__all__ = [
    "AUX_KINDS",
    "TOKEN_KINDS",
    "Backbone",
    "build_head",
    "build_model",
    "list_models",
    "model_entry",
    "register_model",
    "trace_backbone",
]
