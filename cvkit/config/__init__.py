"""Typed configuration: YAML files → pydantic models, one per section, unknown keys forbidden.

``load_config("configs/ssd.yaml", ["train.epochs=3"])`` returns a validated
:class:`Config`; ``save_config`` writes the resolved form next to a run's outputs.
"""

from cvkit.config.loader import config_to_dict, load_config, merge, parse_overrides, save_config
from cvkit.config.schema import Config

__all__ = ["Config", "config_to_dict", "load_config", "merge", "parse_overrides", "save_config"]
