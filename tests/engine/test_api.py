"""``cvkit.train(cfg, **overrides)``: the CLI's training path from Python, returning the run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cvkit
from cvkit.config import load_config
from cvkit.engine.callbacks import Callback
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.errors import ConfigError
from cvkit.logs import setup_logging

SSD_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "ssd.yaml")


@pytest.fixture
def tiny(tmp_path):
    yield {
        "data__synthetic__num_train": 8,
        "data__synthetic__num_val": 4,
        "data__synthetic__image_size": 64,
        "data__image_size": 64,
        "data__batch_size": 4,
        "data__workers": 0,
        "data__cache_dir": str(tmp_path / "cache"),
        "train.epochs": 2,
        "train__threads": 1,
        "device": "cpu",
        "export__after_train": False,
    }
    setup_logging()  # detach the run folder's log file


class CountSteps(Callback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, step_info):
        self.steps += 1


def test_train_returns_the_run_the_folder_records(tmp_path, tiny):
    counter = CountSteps()
    run = cvkit.train(SSD_CONFIG, out=tmp_path / "run", callbacks=[counter], **tiny)
    assert run.folder == tmp_path / "run" and run.best.is_file() and run.last.is_file()
    assert run.epochs == 2 and counter.steps == 2 * 2  # 8 images, batches of 4
    best = load_checkpoint(run.best)
    assert run.metrics == pytest.approx(best["metrics"], nan_ok=True)
    assert run.best_epoch == best["epoch"]
    rows = [json.loads(line) for line in (run.folder / "metrics.jsonl").read_text().splitlines()]
    assert rows[run.best_epoch - 1]["val/mAP"] == run.metrics["mAP"]
    saved = load_config(run.folder / "config.yaml")
    assert saved.train.epochs == 2 and saved.data.image_size == 64 and run.onnx is None


def test_a_config_object_and_a_bad_key(tmp_path, tiny):
    config = load_config(SSD_CONFIG)
    run = cvkit.train(config, out=tmp_path / "run", **{**tiny, "train.epochs": 1})
    assert run.epochs == 1 and load_config(run.folder / "config.yaml").model == config.model
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        cvkit.train(SSD_CONFIG, out=tmp_path / "bad", train__epoch=1)


def test_import_cvkit_and_looking_up_the_api_load_no_torch():
    code = "import sys, cvkit; cvkit.train, cvkit.load; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_the_trainer_imports_no_image_libraries():
    # the engine stays light for every task (a DDP rank or a custom task that never reads an
    # image): OpenCV and albumentations come with the data pipeline that needs them
    code = (
        "import sys, cvkit.engine.trainer; "
        "sys.exit(bool({'cv2', 'albumentations'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
