"""Config loading: unknown keys, wrong types, overrides, base inheritance, round trip."""

from pathlib import Path

import pytest
import yaml

from cvkit.config import Config, load_config, save_config
from cvkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_file():
    assert load_config() == Config()


def test_unknown_top_level_key_names_key_file_and_allowed(tmp_path):
    cfg = write(tmp_path / "bad.yaml", {"trian": {"epochs": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert "'trian'" in message
    assert str(cfg) in message
    assert "train" in message.split("allowed keys:")[1]


def test_unknown_nested_key_lists_section_keys(tmp_path):
    cfg = write(tmp_path / "bad.yaml", {"train": {"lr0": 0.1}})
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert "'train.lr0'" in message
    allowed = message.split("allowed keys:")[1]
    assert "lr" in allowed and "epochs" in allowed and "image_size" not in allowed


def test_wrong_type_names_key_and_expected_type(tmp_path):
    cfg = write(tmp_path / "bad.yaml", {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert "train.epochs" in message and "integer" in message and "'many'" in message
    assert str(cfg) in message


def test_invalid_yaml_and_non_mapping_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_parsed_and_type_checked(tmp_path):
    cfg = write(tmp_path / "c.yaml", {"train": {"epochs": 10}})
    config = load_config(cfg, ["train.epochs=3", "model.backbone=resnet50", "train.lr=1e-3"])
    assert config.train.epochs == 3
    assert config.model.backbone == "resnet50"
    assert config.train.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"--set train\.epochs: train\.epochs"):
        load_config(cfg, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match=r"--set trian\.epochs: unknown key 'trian'"):
        load_config(cfg, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(cfg, ["train.epochs"])


def test_base_inheritance_merges_sections(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", {"name": "base", "train": {"epochs": 5, "lr": 0.5}})
    child = write(tmp_path / "sub" / "child.yaml", {"base": "../base.yaml", "train": {"epochs": 7}})
    config = load_config(child)
    assert config.name == "base"
    assert config.train.epochs == 7
    assert config.train.lr == 0.5


def test_error_in_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"lr0": 0.5}})
    child = write(tmp_path / "child.yaml", {"base": "base.yaml", "name": "x"})
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(tmp_path / "base.yaml") in str(info.value)


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(
        REPO / "configs" / "ssd.yaml", ["train.epochs=2", "data.train.path=x/y.json"]
    )
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == config
    assert "base" not in yaml.safe_load(saved.read_text())


SEARCH_SPACES = {"tune_space.yaml"}  # `cvkit tune --space` files, not training configs


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name not in SEARCH_SPACES),
    ids=lambda p: p.name,
)
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("name", sorted(SEARCH_SPACES))
def test_shipped_search_spaces_validate_and_name_config_keys(name):
    from cvkit.engine.tune import load_space, overrides_of

    space = load_space(REPO / "configs" / name)
    # every searched key is a real config key: a trial's overrides load
    values = {
        key: param.low if param.low is not None else param.choices[0]
        for key, param in space.params.items()
    }
    config = load_config(overrides=overrides_of(values)).model_dump()
    for key, value in values.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "NoSuchTransform"}, r"data\.augment\[1\]: unknown albumentations transform"),
        (
            {"name": "HorizontalFlip", "params": {"prob": 0.5}},
            r"data\.augment\[1\]: bad parameters for HorizontalFlip: unknown \['prob'\]",
        ),
    ],
)
def test_augment_entries_are_checked_when_the_config_loads(tmp_path, entry, message):
    path = tmp_path / "aug.yaml"
    good = {"name": "HorizontalFlip", "params": {"p": 0.5}}
    path.write_text(yaml.safe_dump({"data": {"augment": [good, entry]}}))
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path, [])
    assert str(path) in str(raised.value)
    path.write_text(yaml.safe_dump({"data": {"augment": [good]}}))
    assert load_config(path, []).data.augment[0].name == "HorizontalFlip"
