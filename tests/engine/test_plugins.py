"""A model and a task from an installed package: found through the ``cvkit.models`` and
``cvkit.tasks`` entry points, imported only when their name is first looked up, with the
model's own config section validated by the class the package registers.

The "package" is a module and a ``.dist-info`` folder written to a temporary folder on
``sys.path``, which is what ``pip install`` leaves for ``importlib.metadata`` to read.
"""

import sys
import textwrap

import pytest
import torch

from cvkit.config import load_config
from cvkit.engine.tasks import get_task
from cvkit.errors import ConfigError
from cvkit.models.build import build_model, registered_models

PLUGIN = """
from pydantic import Field
from torch import nn

from cvkit.config.base import Section
from cvkit.engine.tasks import Task, register_task
from cvkit.models.build import register_model


class WidthOptions(Section):
    width: int = Field(3, gt=0)


@register_model("plugin_linear", options=WidthOptions)
def build(config, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(config.model.plugin_linear.width))


@register_task("plugin_task")
class PluginTask(Task):
    best_metric = "score"
"""


def _install(root, module: str, source: str, entry_points: str) -> None:
    """Write ``module.py`` and a dist-info folder declaring ``entry_points`` under ``root``."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    entry_points = f"""
        [cvkit.models]
        plugin_linear = {"cvkit_test_plugin"}

        [cvkit.tasks]
        plugin_task = {"cvkit_test_plugin"}
    """
    _install(tmp_path, "cvkit_test_plugin", PLUGIN, entry_points)
    broken = "[cvkit.models]\nplugin_broken = cvkit_test_broken\n"
    _install(tmp_path, "cvkit_test_broken", "import not_a_module_anywhere\n", broken)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in ("cvkit_test_plugin", "cvkit_test_broken"):
        sys.modules.pop(module, None)


def test_entry_points_provide_a_model_with_its_section_and_a_task(installed):
    # declared names are listed without importing the package
    assert "plugin_linear" in registered_models()
    assert "cvkit_test_plugin" not in sys.modules
    config = load_config(
        None, ["task=plugin_task", "model.name=plugin_linear", "model.plugin_linear.width=5"]
    )
    assert "cvkit_test_plugin" in sys.modules
    assert config.model.plugin_linear.width == 5
    assert get_task("plugin_task").name == "plugin_task"
    model = build_model(config, num_classes=1)
    assert model(torch.zeros(2, 3, 4, 4)).shape == (2, 5)
    with pytest.raises(ConfigError, match=r"'model\.plugin_linear\.wdth'.*allowed keys: width"):
        load_config(None, ["model.name=plugin_linear", "model.plugin_linear.wdth=5"])


def test_an_entry_point_that_fails_to_import_is_named(installed):
    with pytest.raises(ConfigError, match=r"'plugin_broken'.*cvkit_test_broken.*not_a_module"):
        load_config(None, ["model.name=plugin_broken"])


def test_an_unknown_task_lists_the_declared_ones(installed):
    with pytest.raises(ConfigError, match=r"unknown task 'plugin_tsak'.*plugin_task"):
        load_config(None, ["task=plugin_tsak"])
