"""Run difficulty probes and their baselines over several seeds and compare them.

For every seed the training file is subsampled (with ``train_limit``) and a
dev part is held out for picking the neural probes' best epoch. Every probe
and baseline is then scored on the same test examples:

- ``majority``: the training part's majority class (per layer for model-defined difficulty);
- ``random``: 1 with the training part's positive rate (per layer), drawn with the seed;
- ``random-expected``: the expected scores of that random guess, computed exactly
  (``instance_gmean`` is the G-mean of the expected rates);
- the probes of ``hashee_cli.learnability.probes``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from hashee_cli.backbones import load_tokenizer
from hashee_cli.data.reading import Split, subsample
from hashee_cli.devices import resolve_device
from hashee_cli.errors import DataError, HasheeError
from hashee_cli.learnability import metrics
from hashee_cli.learnability.difficulty import DifficultyData, check_kind, load_difficulty, resolve_files
from hashee_cli.learnability.probes import PROBES, NeuralSettings, ProbeRun, get_probe
from hashee_cli.metrics import compute_metrics
from hashee_cli.training import TrainingCallback

MAJORITY = "majority"
RANDOM = "random"
RANDOM_EXPECTED = "random-expected"
BASELINES = (MAJORITY, RANDOM, RANDOM_EXPECTED)


@dataclass
class ProbeSettings:
    """Everything ``hashee learnability-probe`` needs; the resolved settings go into its JSON output."""

    difficulty: str
    data_dir: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] = field(default_factory=list)
    label_column: str = "label"
    layers: int | None = None
    probes: list[str] = field(default_factory=lambda: list(PROBES))
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    train_limit: int | None = None
    test_limit: int | None = None
    dev_fraction: float = 0.1
    device: str = "auto"
    neural: NeuralSettings = field(default_factory=NeuralSettings)

    def __post_init__(self) -> None:
        check_kind(self.difficulty)
        for name in self.probes:
            get_probe(name)
        if len(set(self.probes)) != len(self.probes):
            raise HasheeError(f"--probes names a probe twice ({', '.join(self.probes)})")
        if not self.seeds:
            raise HasheeError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise HasheeError(f"--seeds repeats a seed ({', '.join(map(str, self.seeds))}); give distinct seeds")
        if not 0 < self.dev_fraction < 1:
            raise HasheeError(f"--dev-fraction must be between 0 and 1 (got {self.dev_fraction})")
        for option, value in (("--train-limit", self.train_limit), ("--test-limit", self.test_limit), ("--layers", self.layers)):
            if value is not None and value < 1:
                raise HasheeError(f"{option} must be at least 1 (got {value})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ProbeCallback(TrainingCallback, Protocol):
    """Progress of a probe run: each (probe, seed) start, plus the training loop's events."""

    def on_probe_start(self, probe: str, seed: int) -> None: ...


@dataclass
class ProbeResult:
    """Scores of every probe and baseline for every seed, one row each, and how they compare."""

    kind: str
    metric_names: tuple[str, ...]
    main_metric: str
    rows: pd.DataFrame
    train_file: Path
    test_file: Path
    num_layers: int | None
    train_positive_rate: list[float]

    def summary(self) -> pd.DataFrame:
        """Return one row per probe and baseline: each metric's mean and std over seeds, and the comparison with random."""
        random_scores = self._scores(RANDOM)
        records = []
        for probe, group in self.rows.groupby("probe", sort=False):
            record = {"probe": probe, "kind": group["kind"].iloc[0], "seeds": len(group)}
            for name in self.metric_names:
                record[f"{name}_mean"], record[f"{name}_std"] = metrics.mean_and_std(group[name].tolist())
            is_probe = probe not in BASELINES
            record["delta_vs_random"] = record[f"{self.main_metric}_mean"] - metrics.mean_and_std(random_scores)[0]
            record["beats_random_by_2_std"] = metrics.beats_by_two_std(group[self.main_metric].tolist(), random_scores) if is_probe else None
            records.append(record)
        return pd.DataFrame(records)

    def _scores(self, probe: str) -> list[float]:
        return self.rows.loc[self.rows["probe"] == probe, self.main_metric].tolist()

    def summary_line(self) -> str:
        """Say in one sentence whether any probe beats the random guess by more than two standard deviations."""
        summary = self.summary().set_index("probe")
        metric = self.main_metric

        def score(probe: str) -> str:
            return _mean_std_text(summary.loc[probe, f"{metric}_mean"], summary.loc[probe, f"{metric}_std"])

        baselines = f"random {score(RANDOM)}, majority guess {summary.loc[MAJORITY, f'{metric}_mean']:.4f}"
        learned = [probe for probe in summary.index if probe not in BASELINES]
        if not learned:
            return f"No probe ran ({metric}: {baselines})."
        if len(self.rows["seed"].unique()) < 2:
            return f"One seed gives no standard deviation; pass two or more --seeds to test the probes against the random guess ({metric}: {baselines})."

        winners = [probe for probe in learned if summary.loc[probe, "beats_random_by_2_std"]]
        if not winners:
            best = max(learned, key=lambda probe: summary.loc[probe, f"{metric}_mean"])
            return f"No probe beats the random guess by more than two standard deviations of {metric} (best: {best} {score(best)}; {baselines})."
        verb = "beats" if len(winners) == 1 else "beat"
        scores = ", ".join(f"{probe} {score(probe)}" for probe in winners)
        return f"{' and '.join(winners)} {verb} the random guess by more than two standard deviations of {metric} ({scores}; {baselines})."


def _mean_std_text(mean: float, std: float) -> str:
    return f"{mean:.4f}" if np.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _take(split: Split, indices: np.ndarray) -> Split:
    return dataclasses.replace(
        split,
        texts=[[column[index] for index in indices] for column in split.texts],
        labels=split.labels[indices],
        line_numbers=[split.line_numbers[index] for index in indices],
    )


def hold_out_dev(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off a seeded random share ``fraction`` of ``split`` as a dev part; both keep the file order."""
    size = max(1, round(len(split) * fraction))
    if len(split) - size < 1:
        raise DataError(
            f"{split.source}: {len(split)} training example(s) leave none for training after holding out "
            f"{size} for dev; use more examples or a smaller --dev-fraction"
        )
    order = np.random.default_rng(seed).permutation(len(split))
    return _take(split, np.sort(order[size:])), _take(split, np.sort(order[:size]))


def _check_training_part(part: Split, kind: str, seed: int) -> None:
    # The whole file has both classes (checked on loading), but a small subset may not.
    if len(np.unique(part.labels)) < 2:
        label_kind = "difficulty label" if kind == "human" else "entry of every label vector"
        raise DataError(
            f"{part.source}: the {len(part)} training examples drawn with seed {seed} all have the same {label_kind} "
            f"({part.labels.flat[0]}); raise --train-limit"
        )


def _baseline_predictions(train: Split, test: Split, seed: int) -> dict[str, np.ndarray]:
    rates = metrics.positive_rates(train.labels)
    return {
        MAJORITY: metrics.majority_guess(train.labels, len(test)),
        RANDOM: metrics.random_guess(rates, len(test), seed),
    }


def _expected_random(kind: str, train: Split, test: Split) -> dict[str, float]:
    rates = metrics.positive_rates(train.labels)
    if kind == "human":
        return metrics.expected_random_human(float(rates), test.labels)
    return metrics.expected_random_model(rates, test.labels)


def run_probes(settings: ProbeSettings, callback: ProbeCallback | None = None) -> ProbeResult:
    """Load the difficulty data, run every baseline and probe for every seed, and return their scores."""
    train_file, test_file = resolve_files(settings.difficulty, settings.data_dir, settings.train_file, settings.test_file)
    data: DifficultyData = load_difficulty(
        settings.difficulty, train_file, test_file, settings.text_columns or None, settings.label_column, settings.layers
    )
    device = resolve_device(settings.device)
    task = data.task
    test = subsample(data.test, settings.test_limit, settings.seeds[0])
    tokenizer_cache = {}

    def load_shared_tokenizer():
        if "tokenizer" not in tokenizer_cache:
            tokenizer_cache["tokenizer"] = load_tokenizer(settings.neural.model)
        return tokenizer_cache["tokenizer"]

    rows = []
    for seed in settings.seeds:
        train_part, dev = hold_out_dev(subsample(data.train, settings.train_limit, seed), settings.dev_fraction, seed)
        _check_training_part(train_part, settings.difficulty, seed)
        common = {"num_train": len(train_part), "num_dev": len(dev), "num_test": len(test)}

        def add_row(probe: str, kind: str, scores: dict[str, float], seconds: float, model: str = "") -> None:
            rows.append(
                {"difficulty": settings.difficulty, "probe": probe, "kind": kind, "seed": seed, **scores, **common,
                 "num_layers": data.num_layers, "model": model, "seconds": seconds}
            )

        for name, predictions in _baseline_predictions(train_part, test, seed).items():
            add_row(name, "baseline", compute_metrics(task.metrics, predictions, test.labels), 0.0)
        add_row(RANDOM_EXPECTED, "baseline", _expected_random(settings.difficulty, train_part, test), 0.0)

        run = ProbeRun(seed, task, train_part, dev, test, settings.neural, device, load_shared_tokenizer, callback)
        for name in settings.probes:
            probe = get_probe(name)
            if callback is not None:
                callback.on_probe_start(name, seed)
            start = time.perf_counter()
            predictions = probe.fit_predict(run)
            scores = compute_metrics(task.metrics, predictions, test.labels)
            add_row(name, "probe", scores, time.perf_counter() - start, settings.neural.model if probe.uses_backbone else "")

    frame = pd.DataFrame(rows)
    frame["train_file"] = str(train_file)
    frame["test_file"] = str(test_file)
    rates = np.atleast_1d(metrics.positive_rates(data.train.labels)).tolist()
    return ProbeResult(
        settings.difficulty, task.metrics, task.main_metric, frame, train_file, test_file, data.num_layers, rates
    )

