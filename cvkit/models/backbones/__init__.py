"""Backbones from LeNet to ResNet and CSPDarknet behind one factory, :func:`create_backbone`.

Every backbone returns an ``OrderedDict`` of feature maps and exposes ``channels`` and
``strides`` for them (see :class:`~cvkit.models.backbones.base.Backbone`). Importing this
package registers all architectures.
"""

from cvkit.models.backbones import alexnet, cspdarknet, googlenet, lenet, nin, resnet, vgg
from cvkit.models.backbones.base import Backbone, StageInfo, scale_channels
from cvkit.models.backbones.registry import create_backbone, list_backbones, register_backbone
from cvkit.models.backbones.weights import load_backbone_weights, read_state_dict

__all__ = [
    "Backbone",
    "StageInfo",
    "alexnet",
    "create_backbone",
    "cspdarknet",
    "googlenet",
    "lenet",
    "list_backbones",
    "load_backbone_weights",
    "nin",
    "read_state_dict",
    "register_backbone",
    "resnet",
    "scale_channels",
    "vgg",
]
