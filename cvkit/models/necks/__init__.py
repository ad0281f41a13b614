"""Necks: feature maps from a backbone → the levels a head reads (FPN, PAN, SSD extra blocks).

Every neck is a :class:`~cvkit.models.necks.base.Neck` built from its inputs'
:class:`~cvkit.models.necks.base.ShapeSpec` (channels, stride) and declaring its outputs'.
:func:`build_neck` builds a registered one by name; importing this package registers the
built-in necks.
"""

from cvkit.models.necks.base import Neck, ShapeSpec, backbone_shapes
from cvkit.models.necks.fpn import FPN
from cvkit.models.necks.pan import PAN
from cvkit.models.necks.registry import build_neck, list_necks, register_neck
from cvkit.models.necks.ssd_extras import SSDExtras, extra_block

__all__ = [
    "FPN",
    "PAN",
    "Neck",
    "SSDExtras",
    "ShapeSpec",
    "backbone_shapes",
    "build_neck",
    "extra_block",
    "list_necks",
    "register_neck",
]
