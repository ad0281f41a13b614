"""``data.mosaic`` in a real training run: the detection training split is wrapped, the
Trainer turns multi-sample transforms off for the last ``data.close_mosaic`` epochs, and the
loader's keys give mosaics while the flag is on and the plain samples once it is off."""

import torch
from engine_toys import TINY_SSD, detect_trainer

from cvkit.config import load_config
from cvkit.data.loader import RecordsDataset
from cvkit.data.mosaic import MosaicDataset
from cvkit.data.sampling import SampleKey
from cvkit.engine.callbacks import Callback
from cvkit.engine.tasks.detect import DetectTask

SETTINGS = [
    *TINY_SSD,
    "data.workers=0",
    "data.augment=[]",
    "data.mosaic=1.0",
    "data.close_mosaic=1",
    "data.synthetic.num_train=8",
    "train.epochs=3",
]


class Batches(Callback):
    """The sampler's ``multi_sample`` flag during each epoch."""

    def __init__(self):
        self.flags, self.pending = [], False

    def on_epoch_start(self, trainer, epoch):
        self.pending = True

    def on_batch_end(self, trainer, batch_info):
        if self.pending:
            self.flags.append(trainer.train_loader.sampler.multi_sample)
            self.pending = False


def test_mosaic_epochs_then_close_mosaic_epochs(tmp_path):
    config = load_config(overrides=[*SETTINGS, f"data.cache_dir={tmp_path / 'cache'}"])
    task = DetectTask(config)
    train, val = task.build_dataset("train"), task.build_dataset("val")
    assert isinstance(train, MosaicDataset) and isinstance(val, RecordsDataset)
    record = Batches()
    trainer = detect_trainer(config, task, tmp_path / "run", callbacks=[record])
    loader = trainer.train_loader
    trainer.fit()
    assert record.flags == [True, True, False]
    # the loader's keys of the last epoch give the plain samples, those of a mosaic epoch the
    # mosaic of four (at mosaic=1.0 every sample is one, with more objects than its own)
    loader.sampler.set_epoch(0)
    loader.sampler.multi_sample = True
    key = next(iter(loader.sampler))
    assert isinstance(key, SampleKey) and key.multi_sample
    _, combined = train[key]
    _, own = train.dataset[key]
    plain = SampleKey(key.index, key.seed, key.epoch, False)
    _, closed = train[plain]
    assert torch.equal(closed.boxes, own.boxes)
    assert len(combined.boxes) != len(own.boxes) or not torch.equal(combined.boxes, own.boxes)
