"""Run directories never overwrite an earlier run and hold the resolved config."""

from cvkit.config import load_config
from cvkit.engine.rundir import create_run_dir
from cvkit.logs import get_logger, setup_logging


def test_run_dirs_increment_and_save_config(tmp_path):
    config = load_config(overrides=["name=demo", "task=segment", "train.epochs=4"])
    try:
        first = create_run_dir(config, root=tmp_path)
        second = create_run_dir(config, root=tmp_path)
        get_logger().info("hello from the run")
    finally:
        setup_logging()
    assert first.root == tmp_path / "segment" / "demo"
    assert second.root == tmp_path / "segment" / "demo2"
    assert load_config(second.config) == config
    assert second.weights.is_dir() and second.plots.is_dir()
    assert "hello from the run" in second.log.read_text()
    assert "hello from the run" not in first.log.read_text()


def test_explicit_out_is_used_as_is(tmp_path):
    config = load_config()
    try:
        run = create_run_dir(config, out=tmp_path / "here")
    finally:
        setup_logging()
    assert run.root == tmp_path / "here" and run.config.exists()
