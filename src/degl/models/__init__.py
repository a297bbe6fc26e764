"""Backbones as lists of blocks, single-device, no training code."""

from degl.models import (  # noqa: F401  (importing a family registers its models)
    cifar,
    dni_cnn,
    greedynet,
    resnet_cifar,
    resnet_imagenet,
    vgg,
)
from degl.models.heads import AUX_KINDS, build_head
from degl.models.registry import Backbone, build_model, list_models, model_entry, register_model

__all__ = [
    "AUX_KINDS",
    "Backbone",
    "build_head",
    "build_model",
    "list_models",
    "model_entry",
    "register_model",
]
