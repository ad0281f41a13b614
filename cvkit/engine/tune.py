"""Hyper-parameter search with Optuna: ``cvkit tune --cfg CFG --space SPACE --trials N``.

A search space (YAML, :class:`SearchSpace`) names config keys in ``--set`` notation
(``train.lr``, ``model.ssd.neg_pos_ratio``) and the range each one is drawn from. Every trial is
an ordinary ``cvkit train`` run (:func:`cvkit.engine.commands.run_training`) of the config with
the trial's values set, in ``<out>/trials/<number>/``. Optuna's TPE sampler proposes the
values; the :class:`OptunaPruning` callback reports the validation metric after every
validation (every ``train.val_every`` epochs) and, when the pruner (median or successive
halving) says the trial is behind, asks the trainer to stop after that epoch, so the trial ends
cleanly (``last.pt``, metrics files and curves written) and is recorded as pruned.

The study lives in ``<out>/study.db`` (SQLite). Trials beat a heartbeat into it; a
``cvkit tune`` that was killed leaves its running trial stale, and the next ``cvkit tune`` on
the same folder marks it failed, runs its values again first, and continues until ``--trials``
trials have completed or been pruned in total. At the end ``<out>/best.yaml`` holds the whole
config with the best trial's values (``cvkit train --cfg best.yaml`` accepts it) and
``<out>/plots/`` the optimisation history and the parameter importances.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
import yaml
from pydantic import Field, ValidationError, model_validator

from cvkit.config import load_config, save_config
from cvkit.config.base import Section
from cvkit.engine.callbacks import Callback
from cvkit.errors import ConfigError
from cvkit.logs import get_logger

if TYPE_CHECKING:
    from cvkit.engine.trainer import Trainer

logger = get_logger("tune")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
HEARTBEAT_S = 30.0


class SearchParam(Section):
    """The range of one config key.

    ``float``: ``low``..``high`` (``log: true`` samples the exponent uniformly, ``step`` makes
    it discrete); ``int``: ``low``..``high`` inclusive with ``step``; ``categorical``: one of
    ``choices`` (any YAML values).
    """

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"needs 'low' <= 'high', got low={self.low}, high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("'log: true' needs low > 0 and no 'step'")
        return self


class SearchSpace(Section):
    """A search-space file (``configs/tune_space.yaml``).

    Attributes:
        params: config key (dotted, as ``--set``) → :class:`SearchParam`.
        metric: the validation metric to optimise (default: the task's ``best_metric``,
            e.g. ``mAP``); it must be higher-is-better unless ``direction: minimize``.
        direction: ``maximize`` or ``minimize``.
        pruner: ``median`` (stop a trial whose value is below the median of earlier trials at
            the same epoch), ``halving`` (asynchronous successive halving) or ``none``.
        startup_trials: trials sampled at random before TPE models the space, and trials that
            complete before the median pruner starts pruning.
        warmup_epochs: the median pruner never prunes a trial in its first
            ``warmup_epochs`` epochs (values are reported at step = epochs done, from 1).
        seed: the sampler's seed (the trials' training seed is the config's ``seed``).
    """

    params: dict[str, SearchParam] = Field(min_length=1)
    metric: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    pruner: Literal["median", "halving", "none"] = "median"
    startup_trials: int = Field(3, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    seed: int = 0


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file.

    Raises:
        ConfigError: unreadable file, unknown key or bad range; the message names the file and
            the key.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the search space: {exc}") from None
    try:
        return SearchSpace.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw the trial's value of every parameter of ``space`` (dotted key → value)."""
    values: dict[str, Any] = {}
    for key, param in space.params.items():
        if param.type == "categorical":
            values[key] = trial.suggest_categorical(key, param.choices)
        elif param.type == "int":
            step = int(param.step or 1)
            values[key] = trial.suggest_int(
                key, int(param.low), int(param.high), step=step, log=param.log
            )
        else:
            values[key] = trial.suggest_float(
                key, param.low, param.high, step=param.step, log=param.log
            )
    return values


def overrides_of(values: dict[str, Any]) -> list[str]:
    """``{"train.lr": 0.01}`` → ``["train.lr=0.01"]`` (values as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


class OptunaPruning(Callback):
    """Report the validation ``metric`` to an Optuna trial and stop a trial the pruner drops.

    After each validation the value is reported at step ``trainer.epoch``; when
    ``trial.should_prune()`` the trainer is asked to stop after this epoch
    (``trainer.stop_requested``), so the run ends as an early stop does and the objective then
    raises :class:`optuna.TrialPruned` (see :attr:`pruned_at`).

    Args:
        trial: the running trial.
        metric: key of the task's validation metrics.
    """

    name = "optuna_pruning"

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Report ``metrics[metric]``; request the stop when the pruner says so.

        Raises:
            ConfigError: the task's metrics have no ``metric``.
        """
        if self.metric not in metrics:
            raise ConfigError(
                f"tune metric {self.metric!r} is not a validation metric of this task; "
                f"it has {sorted(metrics)}"
            )
        value = float(metrics[self.metric])
        if math.isfinite(value):
            self.trial.report(value, trainer.epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.epoch
            trainer.stop_requested = True


def build_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The pruner ``space.pruner`` names."""
    if space.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=space.startup_trials, n_warmup_steps=space.warmup_epochs + 1
        )
    if space.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(
    folder: str | Path, space: SearchSpace, name: str = "cvkit", heartbeat_s: float = HEARTBEAT_S
) -> optuna.Study:
    """Create the study in ``<folder>/study.db`` or load the one there.

    Running trials send a heartbeat every ``heartbeat_s`` seconds; a trial silent for twice
    that (its process was killed) is marked failed when a study is opened or a trial starts,
    and its values are queued to run again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{folder.resolve() / 'study.db'}",
            heartbeat_interval=max(1, round(heartbeat_s)),
            grace_period=max(2, round(2 * heartbeat_s)),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(1),
        )
        sampler = optuna.samplers.TPESampler(
            seed=space.seed, n_startup_trials=max(space.startup_trials, 1)
        )
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=build_pruner(space),
            study_name=name,
            direction=space.direction,
            load_if_exists=True,
        )
        optuna.storages.fail_stale_trials(study)
    return study


def run_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    trials: int,
    minutes: float | None = None,
    catch: tuple[type[Exception], ...] = (),
) -> optuna.Study:
    """Run ``objective`` until ``trials`` trials of the study have completed or been pruned
    (counting those of earlier sessions), or ``minutes`` have passed (no new trial starts
    after that; the running one finishes). Exceptions in ``catch`` fail a trial and the search
    goes on."""
    done = sum(trial.state in FINISHED for trial in study.trials)
    if done >= trials:
        return study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective,
            n_trials=None,
            timeout=None if minutes is None else minutes * 60.0,
            catch=catch,
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED)],
        )
    return study


def plot_study(study: optuna.Study, folder: str | Path) -> list[Path]:
    """``optimization_history.png`` and, with two or more completed trials,
    ``param_importances.png`` (fANOVA) in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    drawers = [("optimization_history.png", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2 and study.best_trial.params:
        drawers.append(("param_importances.png", optuna_plots.plot_param_importances))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in drawers:
            axes = draw(study)
            axes.figure.set_size_inches(7, 4.5)
            axes.figure.tight_layout()
            axes.figure.savefig(folder / name, dpi=100)
            plt.close(axes.figure)
            written.append(folder / name)
    return written


@dataclass
class TuneResult:
    """What :func:`tune` produced.

    Attributes:
        study: the Optuna study (all sessions' trials).
        best_params: dotted config key → value of the best trial.
        best_value: its metric.
        best_config: ``best.yaml``, the config with those values.
        plots: the PNGs written.
        states: how many trials ended in each state (``COMPLETE``, ``PRUNED``, ``FAIL`` ...).
    """

    study: optuna.Study
    best_params: dict[str, Any]
    best_value: float
    best_config: Path
    plots: list[Path] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)


def tune(
    cfg: str | Path,
    space: SearchSpace | str | Path,
    trials: int,
    out: str | Path,
    minutes: float | None = None,
    overrides: Sequence[str] = (),
    heartbeat_s: float = HEARTBEAT_S,
) -> TuneResult:
    """Search ``space`` for the config ``cfg`` (plus ``overrides``), training every trial with
    :func:`cvkit.engine.commands.run_training`; see the module docstring.

    Args:
        cfg: the YAML config every trial starts from.
        space: a :class:`SearchSpace` or its YAML file.
        trials: completed + pruned trials wanted in the study (earlier sessions count).
        out: the study folder (``study.db``, ``trials/``, ``best.yaml``, ``plots/``).
        minutes: no new trial starts after this many minutes of this session.
        overrides: ``KEY=VALUE`` settings for every trial (``--set``).
        heartbeat_s: trial heartbeat period (stale after twice that).

    Raises:
        ConfigError: a bad config, space or metric name; no trial completed.
    """
    from cvkit.engine.commands import run_training
    from cvkit.engine.tasks import get_task
    from cvkit.engine.trainer import NonFiniteLossError

    out = Path(out)
    space = space if isinstance(space, SearchSpace) else load_space(space)
    base = [*overrides, "export.after_train=false"]
    config = load_config(cfg, base)
    metric = space.metric or get_task(config.task).best_metric

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        trial_config = load_config(cfg, [*base, *overrides_of(values)])
        pruning = OptunaPruning(trial, metric)
        folder = out / "trials" / f"{trial.number:03d}"
        run = run_training(trial_config, out=folder, callbacks=[pruning])
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {pruning.pruned_at}")
        if metric not in run.metrics:
            raise ConfigError(f"trial {trial.number}: the run has no validation {metric!r}")
        return float(run.metrics[metric])

    study = open_study(out, space, config.name, heartbeat_s)
    run_study(study, objective, trials, minutes, catch=(NonFiniteLossError,))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"{out}: no trial completed; see {out / 'trials'}")
    best = study.best_trial
    best_config = save_config(
        load_config(cfg, [*overrides, *overrides_of(best.params)]), out / "best.yaml"
    )
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return TuneResult(
        study,
        dict(best.params),
        float(best.value),
        best_config,
        plot_study(study, out / "plots"),
        states,
    )


def run_tune(args: argparse.Namespace) -> int:
    """``cvkit tune``: run the search and print the best trial; returns the exit code."""
    out = Path(args.out) if args.out else Path("runs") / "tune" / Path(args.cfg).stem
    result = tune(args.cfg, args.space, args.trials, out, args.time, args.overrides)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result.states.items()))
    print(f"cvkit tune: {len(result.study.trials)} trials ({counts}) in {out}")
    print(f"best trial {result.study.best_trial.number}: {result.best_value:.4f}")
    for key, value in result.best_params.items():
        print(f"  {key} = {value}")
    print(f"best config: {result.best_config} (cvkit train --cfg {result.best_config})")
    for path in result.plots:
        print(f"plot: {path}")
    return 0
