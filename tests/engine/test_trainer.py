"""The training loop: exact resume, NaN detection, accumulation, checkpoints and metric files."""

import json
import math

import pytest
import torch
from engine_toys import LossRecorder, ToyDataset, ToyModel, ToyTask, toy_config, toy_loader

from cvkit.engine.callbacks import Callback
from cvkit.engine.callbacks.builtin import TimeBudget
from cvkit.engine.checkpoint import load_checkpoint
from cvkit.engine.rundir import RunDir
from cvkit.engine.trainer import NonFiniteLossError, Trainer, resolve_amp
from cvkit.errors import ConfigError


def make_run(tmp_path, name):
    run = RunDir(tmp_path / name)
    for folder in (run.root, run.weights, run.plots):
        folder.mkdir(parents=True, exist_ok=True)
    return run


def make_trainer(config, run=None, model_seed=0, batch_size=4, shuffle=True, task=None):
    torch.manual_seed(model_seed)
    model = ToyModel(dropout=0.2)
    train = toy_loader(ToyDataset(16, noise=0.1), batch_size=batch_size, shuffle=shuffle)
    val = toy_loader(ToyDataset(8, seed=1))
    task = task or ToyTask(config)
    recorder = LossRecorder()
    trainer = Trainer(
        config, task, model, train, val, run=run, device=torch.device("cpu"), callbacks=[recorder]
    )
    trainer.recorded = recorder.losses
    return trainer


class InterruptAtEpoch(ToyTask):
    """Raises KeyboardInterrupt on the first batch of epoch ``stop_epoch`` (1-based)."""

    def __init__(self, config, stop_epoch, batches_per_epoch):
        super().__init__(config)
        self.calls = 0
        self.stop_at = (stop_epoch - 1) * batches_per_epoch

    def loss(self, model, batch):
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.calls += 1
        return super().loss(model, batch)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    settings = [
        "train.epochs=4",
        "train.warmup_epochs=1",
        "train.accumulate=2",
        "train.ema=true",
        "train.grad_clip=1.0",
        "train.optimizer=adamw",
        "train.lr=0.01",
    ]
    config = toy_config(*settings)
    torch.manual_seed(123)
    full = make_trainer(config, make_run(tmp_path, "full"))
    full.fit()

    torch.manual_seed(123)
    interrupted_run = make_run(tmp_path, "interrupted")
    interrupted = make_trainer(config, interrupted_run, task=InterruptAtEpoch(config, 3, 4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(interrupted_run.last)["epoch"] == 2

    torch.manual_seed(999)  # a different state everywhere: resume must restore all of it
    resumed = make_trainer(config, interrupted_run, model_seed=5)
    resumed.resume(interrupted_run.last)
    resumed.fit()

    assert len(full.recorded) == 16 and len(resumed.recorded) == 8
    assert interrupted.recorded == full.recorded[:8]
    assert resumed.recorded == full.recorded[8:]
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in full.ema.module.state_dict().items():
        assert torch.equal(value, resumed.ema.module.state_dict()[name]), name
    rows = [json.loads(line) for line in interrupted_run.metrics_jsonl.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]


class NaNAtBatch(ToyTask):
    def __init__(self, config, bad_call):
        super().__init__(config)
        self.calls = 0
        self.bad_call = bad_call

    def loss(self, model, batch):
        losses = super().loss(model, batch)
        self.calls += 1
        if self.calls == self.bad_call:
            losses["mse"] = losses["mse"] * float("nan")
        return losses


def test_nan_loss_stops_at_that_step_before_updating_weights():
    config = toy_config("train.epochs=3")
    trainer = make_trainer(config, task=NaNAtBatch(config, bad_call=6))
    snapshots = []
    original_step = trainer._optimizer_step

    def recording_step():
        original_step()
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    trainer._optimizer_step = recording_step
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    # batch 6 overall = epoch 2, batch index 1, after 5 optimizer steps
    assert "epoch 2, step 5, batch 1" in message
    assert "mse=nan" in message and "images (4, 3, 4, 4)" in message
    assert trainer.step == 5 and len(snapshots) == 5
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, snapshots[-1][name])
        assert torch.isfinite(value).all()


def test_gradient_accumulation_equals_one_large_batch():
    settings = ["train.epochs=1", "train.optimizer=sgd", "train.weight_decay=0", "train.lr=0.1"]
    small = make_trainer(toy_config(*settings, "train.accumulate=2"), batch_size=2, shuffle=False)
    small.model.dropout.p = 0.0
    small.train_loader.dataset.noise = 0.0
    large = make_trainer(toy_config(*settings), batch_size=4, shuffle=False)
    large.model.dropout.p = 0.0
    large.train_loader.dataset.noise = 0.0
    small.fit()
    large.fit()
    assert small.step == large.step == 4
    for name, value in large.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_best_and_last_checkpoints_metrics_files_and_plot(tmp_path):
    run = make_run(tmp_path, "run")
    config = toy_config("train.epochs=3", "train.plots=true")
    trainer = make_trainer(config, run)
    best = trainer.fit()
    rows = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    scores = [row["val/neg_mse"] for row in rows]
    assert best["neg_mse"] == max(scores)
    best_ckpt = load_checkpoint(run.best)
    assert best_ckpt["metrics"]["neg_mse"] == max(scores)
    assert best_ckpt["epoch"] == 1 + scores.index(max(scores))
    last = load_checkpoint(run.last)
    assert last["epoch"] == 3 and last["step"] == 12 and last["classes"] == ["a", "b"]
    assert last["config"]["train"]["epochs"] == 3
    header = run.metrics_csv.read_text().splitlines()[0].split(",")
    assert {"epoch", "train/mse", "train/loss", "lr", "img_per_s", "val/neg_mse"} <= set(header)
    assert len(run.metrics_csv.read_text().splitlines()) == 4
    assert (run.plots / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the cosine schedule ends at lr * min_lr_ratio
    assert math.isclose(rows[-1]["lr"], 0.05 * 0.01, rel_tol=1e-6)


class ConstantMetric(ToyTask):
    def evaluate(self, model, loader, device):
        return {"neg_mse": 1.0}


def test_patience_stops_after_validations_without_improvement():
    config = toy_config("train.epochs=10", "train.patience=2")
    trainer = make_trainer(config, task=ConstantMetric(config))
    trainer.fit()
    assert trainer.epoch == 3  # improved at 1, stale at 2 and 3


class InterruptConstant(InterruptAtEpoch):
    def evaluate(self, model, loader, device):
        return {"neg_mse": 1.0}


def test_early_stopping_state_survives_a_resume(tmp_path):
    config = toy_config("train.epochs=10", "train.patience=2")
    run = make_run(tmp_path, "run")
    interrupted = make_trainer(config, run, task=InterruptConstant(config, 3, 4))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    checkpoint = load_checkpoint(run.last)
    assert checkpoint["epoch"] == 2 and checkpoint["callbacks"]["early_stopping"] == {"stale": 1}
    resumed = make_trainer(config, run, task=ConstantMetric(config))
    resumed.resume(run.last)
    resumed.fit()
    assert resumed.epoch == 3  # one more stale validation reaches the patience, as unresumed


class FakeClock(Callback):
    """A clock that moves ``epoch_seconds`` forward at the start of every epoch."""

    def __init__(self, epoch_seconds):
        self.now = 1000.0
        self.epoch_seconds = epoch_seconds

    def __call__(self):
        return self.now

    def on_epoch_start(self, trainer, epoch):
        self.now += self.epoch_seconds


def timed_trainer(config, run, clock):
    trainer = make_trainer(config, run)
    trainer.callbacks.insert(0, clock)
    trainer._callback(TimeBudget).clock = clock
    return trainer


def test_train_time_fits_the_epochs_and_the_schedule_into_the_budget(tmp_path):
    # 2 minutes at 30 s per epoch: 4 epochs instead of 100, ending where a 4-epoch run ends
    config = toy_config("train.epochs=100", "train.time=2", "train.warmup_epochs=0")
    trainer = timed_trainer(config, make_run(tmp_path, "timed"), FakeClock(30.0))
    trainer.fit()
    planned = make_trainer(toy_config("train.epochs=4", "train.warmup_epochs=0"))
    planned.fit()
    assert trainer.epoch == trainer.epochs == 4
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        planned.optimizer.param_groups[0]["lr"]
    )
    # a budget shorter than one epoch stops after it
    short = timed_trainer(toy_config("train.epochs=100", "train.time=0.1"), None, FakeClock(30.0))
    short.fit()
    assert short.epoch == 1


class SlowingClock(FakeClock):
    """Epochs of ``epoch_seconds`` until epoch ``slow_from`` (0-based), then ``slow_seconds``;
    records the epochs that were validated."""

    def __init__(self, epoch_seconds, slow_from, slow_seconds):
        super().__init__(epoch_seconds)
        self.slow_from, self.slow_seconds = slow_from, slow_seconds
        self.validated = []

    def on_epoch_start(self, trainer, epoch):
        self.now += self.epoch_seconds if epoch < self.slow_from else self.slow_seconds

    def on_validation_end(self, trainer, metrics):
        self.validated.append(trainer.epoch)


def test_train_time_validates_the_epoch_where_the_budget_ends(tmp_path):
    # 30 s epochs plan 10 epochs of 5 minutes; from epoch 3 an epoch takes 200 s, so the
    # budget ends after epoch 3, which is not a val_every epoch: it is validated all the same
    config = toy_config("train.epochs=100", "train.time=5", "train.val_every=4")
    clock = SlowingClock(30.0, 2, 200.0)
    run = make_run(tmp_path, "slowed")
    trainer = timed_trainer(config, run, clock)
    trainer.fit()
    assert trainer.epoch == trainer.epochs == 3
    assert clock.validated == [3] and trainer.best_metrics
    assert load_checkpoint(run.best)["epoch"] == 3


def test_set_epochs_continues_the_new_schedule_at_the_current_step():
    longer = make_trainer(toy_config("train.epochs=10"))
    shorter = make_trainer(toy_config("train.epochs=4"))
    for trainer in (longer, shorter):
        for epoch in range(2):
            trainer.train_one_epoch(epoch)
    assert longer.optimizer.param_groups[0]["lr"] != shorter.optimizer.param_groups[0]["lr"]
    longer.set_epochs(4)
    # the next step runs at the 4-epoch cosine's rate for step 8, not at its step-0 rate
    assert longer.optimizer.param_groups[0]["lr"] == shorter.optimizer.param_groups[0]["lr"]
    assert longer.scheduler.last_epoch == shorter.scheduler.last_epoch == 8


def test_train_time_used_is_kept_across_a_resume(tmp_path):
    config = toy_config("train.epochs=100", "train.time=2", "train.warmup_epochs=0")
    run = make_run(tmp_path, "run")
    interrupted = make_trainer(config, run, task=InterruptAtEpoch(config, 3, 4))
    clock = FakeClock(30.0)
    interrupted.callbacks.insert(0, clock)
    interrupted._callback(TimeBudget).clock = clock
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    state = load_checkpoint(run.last)["callbacks"]["time_budget"]
    assert state == {"used": 60.0, "planned": 4}
    resumed = timed_trainer(config, run, FakeClock(30.0))
    resumed.resume(run.last)
    resumed.fit()
    assert resumed.epoch == 4  # 60 s were used before the interruption
    # and the resumed run trains exactly like an uninterrupted one on the same budget
    full = timed_trainer(config, make_run(tmp_path, "full"), FakeClock(30.0))
    full.fit()
    assert interrupted.recorded + resumed.recorded == full.recorded
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_amp_choice():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    with pytest.raises(ConfigError, match=r"train\.amp: 'fp16' needs a CUDA device"):
        resolve_amp("fp16", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_trains_with_finite_losses():
    config = toy_config("train.epochs=1", "device=cuda", "train.amp=fp16")
    torch.manual_seed(0)
    train = toy_loader(ToyDataset(16))
    recorder = LossRecorder()
    trainer = Trainer(
        config,
        ToyTask(config),
        ToyModel(),
        train,
        device=torch.device("cuda"),
        callbacks=[recorder],
    )
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    trainer.fit()
    assert recorder.losses and all(math.isfinite(v) for v in recorder.losses)


def test_grad_clip_bounds_the_update_and_val_every_skips_epochs(tmp_path):
    settings = [
        "train.epochs=3",
        "train.optimizer=sgd",
        "train.momentum=0",
        "train.weight_decay=0",
        "train.lr=1.0",
        "train.scheduler=constant",
        "train.grad_clip=0.05",
        "train.val_every=2",
    ]
    run = make_run(tmp_path, "run")
    trainer = make_trainer(toy_config(*settings), run, batch_size=16, shuffle=False)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train_one_epoch(0)
    after = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    # one step of plain SGD at lr 1 moves the weights by the clipped gradient: norm 0.05
    assert trainer.step == 1
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(0.05, rel=1e-4)
    trainer.fit()
    rows = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    assert ["val/neg_mse" in row for row in rows] == [False, True, True]


class CountSteps(Callback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, step_info):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}


def test_user_callback_sees_every_step_and_its_state_is_checkpointed(tmp_path):
    run = make_run(tmp_path, "run")
    config = toy_config("train.epochs=3")
    torch.manual_seed(0)
    counter = CountSteps()
    train = toy_loader(ToyDataset(16), batch_size=4)
    trainer = Trainer(config, ToyTask(config), ToyModel(), train, run=run, callbacks=[counter])
    trainer.fit()
    assert counter.steps == 3 * trainer.steps_per_epoch == 12
    assert load_checkpoint(run.last)["callbacks"] == {"CountSteps": {"steps": 12}}
