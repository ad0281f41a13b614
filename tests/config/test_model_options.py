"""A registered model's own ``model.<name>`` section: validated by its class on load and on
assignment, saved and reloaded equal, and registrations that would break those rules refused."""

import pytest
from pydantic import BaseModel, Field

from cvkit.config import load_config, save_config
from cvkit.config.base import Section
from cvkit.config.model import register_model_options
from cvkit.errors import ConfigError


class BlurOptions(Section):
    radius: int = Field(2, ge=0)
    mode: str = "box"


register_model_options("test_blur", BlurOptions)


def test_the_section_round_trips_through_the_saved_yaml(tmp_path):
    config = load_config(None, ["model.name=test_blur", "model.test_blur.radius=5"])
    assert config.model.test_blur == BlurOptions(radius=5)
    assert config.model.model_dump()["test_blur"] == {"radius": 5, "mode": "box"}
    assert load_config(save_config(config, tmp_path / "config.yaml")) == config


def test_a_section_is_accepted_for_a_model_that_is_not_the_named_one():
    config = load_config(None, ["model.test_blur.mode=gauss"])  # model.name stays ssd
    assert config.model.name == "ssd" and config.model.test_blur.mode == "gauss"


def test_assignment_is_validated_by_the_class():
    config = load_config(None, ["model.name=test_blur"])
    config.model.test_blur = {"radius": 7}
    assert config.model.test_blur == BlurOptions(radius=7)
    with pytest.raises(ValueError, match="radius"):
        config.model.test_blur = {"radius": -1}
    with pytest.raises(ConfigError, match=r"model\.test_blr: no field or registered model"):
        config.model.test_blr = {"radius": 1}


def test_registrations_that_break_the_rules_are_refused():
    with pytest.raises(ValueError, match=r"model\.ssd is a built-in field"):
        register_model_options("ssd", BlurOptions)

    class Loose(BaseModel):
        radius: int = 1

    with pytest.raises(TypeError, match="Loose must forbid unknown keys"):
        register_model_options("test_loose", Loose)
    with pytest.raises(TypeError, match="must be a pydantic model class"):
        register_model_options("test_dict", dict)

    class Other(Section):
        radius: int = 1

    with pytest.raises(ValueError, match="'test_blur': options are registered twice"):
        register_model_options("test_blur", Other)
    assert register_model_options("test_blur", BlurOptions) is BlurOptions  # same class: fine
