"""Tuned SSD against the default config on the synthetic shapes, in a fixed CPU budget.

1. ``cvkit tune`` (TPE, median pruning on val mAP@.5 after every epoch) of ``configs/ssd.yaml``
   over ``configs/tune_space.yaml`` for ``--minutes`` of wall-clock time, each trial
   ``--epochs`` epochs on a reduced synthetic set.
2. The same search without pruning for the same time: how many trials each finished.
3. The default config and the best trial's ``best.yaml`` retrained with the same seed for
   ``--final-epochs`` epochs; val mAP@.5 and mAP of both.

Writes ``benchmarks/results/tune.md``. The whole run takes about ``2 * minutes`` plus two
trials plus the two retrainings (about 12 minutes with the defaults on a 2-core CPU).

    python benchmarks/bench_tune.py [--minutes 4] [--epochs 4] [--final-epochs 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import optuna
from machine import cpu_model, uptime

from cvkit.config import load_config
from cvkit.engine.commands import run_training
from cvkit.engine.tune import load_space, tune
from cvkit.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]


def study_summary(study: optuna.Study, epochs: int) -> dict[str, float]:
    """Finished trials, pruned trials, epochs trained and the best value of a study."""
    states = [trial.state for trial in study.trials]
    trained = sum(
        epochs if trial.state == optuna.trial.TrialState.COMPLETE else
        max(trial.intermediate_values, default=0)
        for trial in study.trials
    )  # fmt: skip
    return {
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "epochs": trained,
        "best": study.best_value,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="search time per study")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial")
    parser.add_argument("--final-epochs", type=int, default=10, help="epochs of the retraining")
    parser.add_argument("--train-images", type=int, default=240)
    parser.add_argument("--val-images", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune.md")
    args = parser.parse_args()

    cfg = ROOT / "configs" / "ssd.yaml"
    # two start-up trials instead of the file's three: pruning starts within the short budget
    space = load_space(ROOT / "configs" / "tune_space.yaml").model_copy(
        update={"startup_trials": 2}
    )
    shared = [
        "device=cpu",
        "train.threads=2",
        "data.workers=1",
        "train.plots=false",
        f"data.synthetic.num_train={args.train_images}",
        f"data.synthetic.num_val={args.val_images}",
    ]
    search = [*shared, f"train.epochs={args.epochs}", "train.val_every=1"]
    load_before = uptime()
    started = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        runs = {}
        for label, pruner in (("median pruning", "median"), ("no pruning", "none")):
            clock = time.perf_counter()
            result = tune(
                cfg,
                space.model_copy(update={"pruner": pruner}),
                trials=1000,
                out=work / pruner,
                minutes=args.minutes,
                overrides=search,
            )
            rows[label] = {
                **study_summary(result.study, args.epochs),
                "time_s": time.perf_counter() - clock,
            }
            runs[pruner] = result
        final = [*shared, f"train.epochs={args.final_epochs}", "train.val_every=2"]
        scores = {}
        for label, config_path in (
            ("default (configs/ssd.yaml)", cfg),
            ("tuned (best.yaml, median pruning)", runs["median"].best_config),
        ):
            run = run_training(load_config(config_path, final), out=work / label.split()[0])
            scores[label] = run.metrics
        best_params = runs["median"].best_params
    setup_logging()
    total = time.perf_counter() - started
    lines = [
        "# `cvkit tune`: tuned SSD vs the default config",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/bench_tune.py "
        f"--minutes {args.minutes:g} --epochs {args.epochs} --final-epochs "
        f"{args.final_epochs}` on {cpu_model()} ({os.cpu_count()} cores, shared with other "
        f"jobs); whole run {total / 60:.1f} min of wall-clock time.",
        "",
        f"- Load before: `{load_before}`",
        f"- Load after: `{uptime()}`",
        "",
        f"Data: the synthetic shapes, {args.train_images} train / {args.val_images} val images "
        "at 128 px; model and augmentation as `configs/ssd.yaml`. Search space: "
        "`configs/tune_space.yaml` (lr, weight decay, hard-negative ratio, box-loss weight), "
        f"TPE (seed {space.seed}, {space.startup_trials} random start-up trials), objective "
        f"val mAP@.5 of each trial's best.pt; each trial {args.epochs} epochs, validated "
        "after every epoch.",
        "",
        f"## Pruning's saving: the same search, {args.minutes:g} minutes each",
        "",
        "| study | trials completed | trials pruned | epochs trained | epochs per trial "
        "| best val mAP@.5 | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['complete']} | {row['pruned']} | {row['epochs']} | "
            f"{row['epochs'] / max(row['complete'] + row['pruned'], 1):.2f} | "
            f"{row['best']:.4f} | {row['time_s'] / 60:.1f} min |"
        )
    lines += [
        "",
        "(No new trial starts after the time is up; the one running then finishes. The two "
        "studies run one after the other on a shared machine, so the trial counts also "
        "carry the load; epochs per trial does not.)",
        "",
        f"## Retrained with the same seed and budget: {args.final_epochs} epochs",
        "",
        "| config | val mAP@.5 | val mAP@[.5:.95] |",
        "|---|---|---|",
    ]
    for label, metrics in scores.items():
        lines.append(f"| {label} | {metrics['mAP50']:.4f} | {metrics['mAP']:.4f} |")
    lines += ["", "Best trial's values:", ""]
    lines += [f"- `{key}`: {value:.4g}" for key, value in best_params.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
