"""``data.mosaic`` in a real training run: the detection training split is wrapped, the
Trainer turns multi-sample transforms off for the last ``data.close_mosaic`` epochs, and the
loader's keys give mosaics while the flag is on and the plain samples once it is off."""

import torch

from cvkit.config import load_config
from cvkit.data.loader import RecordsDataset
from cvkit.data.mosaic import MosaicDataset
from cvkit.data.sampling import SampleKey
from cvkit.engine.callbacks import Callback
from cvkit.engine.rundir import RunDir
from cvkit.engine.tasks.detect import DetectTask
from cvkit.engine.trainer import Trainer

SETTINGS = [
    "model.name=ssd",
    "model.backbone=resnet18_tiny",
    "model.out_features=[layer3,layer4]",
    "model.ssd.extra_blocks=1",
    "model.ssd.extra_channels=16",
    "data.image_size=64",
    "data.batch_size=4",
    "data.workers=0",
    "data.augment=[]",
    "data.mosaic=1.0",
    "data.close_mosaic=1",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "train.epochs=3",
    "train.val_every=100",
    "train.plots=false",
    "train.threads=1",
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
    loader = task.build_loader(train, train=True)
    record = Batches()
    folder = RunDir(tmp_path / "run")
    for path in (folder.root, folder.weights, folder.plots):
        path.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        config,
        task,
        task.build_model(len(train.classes)),
        loader,
        task.build_loader(val, train=False),
        run=folder,
        device=torch.device("cpu"),
        callbacks=[record],
    )
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
