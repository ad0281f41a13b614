"""The model registry: names → builders, with errors that name the bad value."""

import pytest
import torch
from torch import nn

from cvkit.config import load_config
from cvkit.errors import ConfigError
from cvkit.models.build import build_model, register_model, registered_models


def test_classifier_is_registered_and_built_from_config():
    config = load_config(None, ["model.name=classifier", "model.backbone=resnet18_tiny"])
    model = build_model(config, num_classes=7)
    assert "classifier" in registered_models()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_register_model_adds_a_builder():
    @register_model("constant_test_model")
    def build(config, num_classes):
        return nn.Linear(1, num_classes)

    config = load_config(None, ["model.name=constant_test_model"])
    assert build_model(config, 3).out_features == 3


def test_unknown_model_names_the_value_and_the_choices():
    config = load_config(None, ["model.name=nope"])
    with pytest.raises(ConfigError, match=r"'nope'.*classifier"):
        build_model(config, 3)


def test_zero_classes_is_an_error():
    config = load_config(None, ["model.name=classifier", "model.backbone=resnet18_tiny"])
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(config, 0)
