"""Plugins from installed packages: Python entry points that register models and tasks.

A package adds a model (or a task) to cvkit without editing it by naming, in its
``pyproject.toml``, the module whose import registers it::

    [project.entry-points."cvkit.models"]
    my_detector = "my_package.detector"    # runs @register_model("my_detector", options=...)

    [project.entry-points."cvkit.tasks"]
    count = "my_package.count_task"         # runs @register_task("count")

The entry point's name is the ``model.name`` (or ``task``) it provides. cvkit imports it the
first time that name is looked up and is not registered yet (config validation,
:func:`cvkit.models.build.build_model`, :func:`cvkit.engine.tasks.get_task`); nothing is
imported at ``import cvkit``. Code that registers in the running process
(``register_model`` / ``register_task`` in a script or a test) needs no entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from cvkit.errors import ConfigError

MODEL_GROUP = "cvkit.models"
TASK_GROUP = "cvkit.tasks"


def load_plugin(group: str, name: str) -> bool:
    """Import the entry points called ``name`` in ``group`` (which registers what they
    provide); False when no installed package declares one.

    Raises:
        ConfigError: the entry point's module (or object) cannot be imported; the message
            names the group, the name and the target.
    """
    found = entry_points(group=group, name=name)
    for point in found:
        try:
            point.load()
        except Exception as exc:
            raise ConfigError(
                f"entry point {name!r} of group {group!r} ({point.value}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return bool(found)


def plugin_names(group: str) -> list[str]:
    """Names declared in ``group`` by installed packages (not imported), sorted."""
    return sorted({point.name for point in entry_points(group=group)})
