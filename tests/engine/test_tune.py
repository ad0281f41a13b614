"""``cvkit tune``: Optuna search over config keys, pruning through the trainer callback, and a
study in SQLite that survives a killed process."""

import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from engine_toys import ToyDataset, ToyModel, ToyTask, toy_loader

from cvkit.cli import main
from cvkit.config import load_config
from cvkit.engine.tasks import register_task
from cvkit.engine.tune import (
    OptunaPruning,
    SearchSpace,
    load_space,
    open_study,
    run_study,
)
from cvkit.errors import ConfigError
from cvkit.logs import setup_logging

ROOT = Path(__file__).resolve().parents[2]


def toy_space(**extra) -> SearchSpace:
    return SearchSpace.model_validate(
        {"params": {"x": {"type": "float", "low": -5, "high": 5}}, "metric": "score", **extra}
    )


def curve_objective(trial, epochs=8):
    """A fake training whose validation score rises over epochs towards ``-(x - 2)^2``; it
    reports through the same callback as the trainer."""
    x = trial.suggest_float("x", -5, 5)
    pruning = OptunaPruning(trial, "score")
    trainer = SimpleNamespace(epoch=0, stop_requested=False)
    score = float("-inf")
    for epoch in range(1, epochs + 1):
        trainer.epoch = epoch
        score = -((x - 2) ** 2) - 4 / epoch
        pruning.on_validation_end(trainer, {"score": score})
        if trainer.stop_requested:
            raise optuna.TrialPruned()
    return score


def test_tpe_finds_the_optimum_and_the_median_pruner_stops_trials_behind(tmp_path):
    study = open_study(tmp_path, toy_space(startup_trials=5), name="toy")
    run_study(study, curve_objective, trials=30)
    states = [t.state for t in study.trials]
    assert (
        states.count(optuna.trial.TrialState.COMPLETE)
        + states.count(optuna.trial.TrialState.PRUNED)
        == 30
    )
    assert abs(study.best_params["x"] - 2) < 0.3
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) >= 5
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for trial in pruned:
        step, value = max(trial.intermediate_values.items())
        earlier = [
            t.intermediate_values[step]
            for t in complete
            if t.number < trial.number and step in t.intermediate_values
        ]
        # a trial is pruned only when it is behind the median of earlier trials at that epoch
        assert value < statistics.median(earlier)


def test_a_killed_study_resumes_with_its_trials(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_tune import curve_objective, toy_space
        from cvkit.engine.tune import open_study, run_study

        def objective(trial):
            if trial.number == 3:
                trial.suggest_float("x", -5, 5)
                time.sleep(0.5)  # its heartbeat is recorded
                os.kill(os.getpid(), signal.SIGKILL)
            return curve_objective(trial)

        run_study(open_study({str(tmp_path)!r}, toy_space(pruner="none"), "toy", 1.0),
                  objective, trials=6)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert process.returncode == -9
    before = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'study.db'}")
    kept = [(t.number, t.params, t.value) for t in before.trials[:3]]
    assert [t.state.name for t in before.trials] == ["COMPLETE"] * 3 + ["RUNNING"]
    killed_params = before.trials[3].params
    time.sleep(2.5)  # the dead trial's heartbeat is now older than the grace period
    study = open_study(tmp_path, toy_space(pruner="none"), "toy", 1.0)
    run_study(study, curve_objective, trials=6)
    assert [(t.number, t.params, t.value) for t in study.trials[:3]] == kept
    assert study.trials[3].state == optuna.trial.TrialState.FAIL
    assert study.trials[4].params == killed_params  # the killed trial's values ran again
    assert [t.state.name for t in study.trials[4:]] == ["COMPLETE"] * 3


def test_bad_space_names_the_file_and_key(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  train.lr: {type: float, low: 0.1, high: 0.01}\n")
    with pytest.raises(ConfigError, match=r"space\.yaml: params\.train\.lr.*low"):
        load_space(path)
    path.write_text("params:\n  train.lr: {type: float, low: 0.01, high: 0.1, lg: true}\n")
    with pytest.raises(ConfigError, match="lg"):
        load_space(path)


@register_task("toy_tune")
class TunableToyTask(ToyTask):
    def build_dataset(self, split):
        return ToyDataset(16)  # validation on the training images: lr decides the score

    def build_loader(self, dataset, train, distributed=False):
        return toy_loader(dataset, batch_size=4)

    def build_model(self, num_classes):
        return ToyModel()


def test_tune_trains_trials_prunes_through_the_trainer_and_writes_best_yaml(tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(
        "task: toy_tune\nname: toy\ndevice: cpu\n"
        "train: {epochs: 4, warmup_epochs: 0, lr: 0.05, threads: 1, plots: false}\n"
    )
    space = tmp_path / "space.yaml"
    space.write_text(
        "pruner: median\nstartup_trials: 1\n"
        "params:\n  train.lr: {type: float, low: 1.0e-6, high: 0.1, log: true}\n"
    )
    out = tmp_path / "study"
    seeded = open_study(out, load_space(space), "toy")
    seeded.enqueue_trial({"train.lr": 0.05})  # learns
    seeded.enqueue_trial({"train.lr": 1e-6})  # behind after its first epoch: pruned
    try:
        code = main(["tune", "--cfg", str(cfg), "--space", str(space), "--trials", "3",
                     "--out", str(out)])  # fmt: skip
    finally:
        setup_logging()
    assert code == 0
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}")
    first, second = study.trials[:2]
    assert first.state.name == "COMPLETE" and second.state.name == "PRUNED"
    assert sorted(first.intermediate_values) == [1, 2, 3, 4]
    assert sorted(second.intermediate_values) == [1]
    rows = (out / "trials" / "001" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1]  # the trainer stopped cleanly
    assert (out / "trials" / "001" / "weights" / "last.pt").is_file()
    # the value is best.pt's metric: the best validation of the run
    assert first.value == pytest.approx(max(first.intermediate_values.values()))
    best = load_config(out / "best.yaml")
    assert best.task == "toy_tune" and best.train.lr == pytest.approx(study.best_params["train.lr"])
    assert (out / "plots" / "optimization_history.png").stat().st_size > 1000
