"""Task metrics by name: accuracy, F1, Pearson and Spearman correlation."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from hashee_cli.errors import HasheeError


def _correlation(function: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def compute(predictions: np.ndarray, targets: np.ndarray) -> float:
        # A constant vector has no defined correlation; report NaN rather than crash.
        if np.ptp(predictions) == 0 or np.ptp(targets) == 0:
            return float("nan")
        return float(function(predictions, targets)[0])

    return compute


# Each metric takes (predictions, targets): class ids for classification and
# real values for regression. F1 treats class id 1 as the positive class.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda predictions, targets: float(accuracy_score(targets, predictions)),
    "f1": lambda predictions, targets: float(f1_score(targets, predictions, pos_label=1, average="binary", zero_division=0)),
    "f1_macro": lambda predictions, targets: float(f1_score(targets, predictions, average="macro", zero_division=0)),
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def get_metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, list(METRICS), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise HasheeError(f"unknown metric {name!r}; {hint}known metrics: {', '.join(METRICS)}")


def compute_metrics(names: tuple[str, ...], predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Return every named metric of ``predictions`` against ``targets`` (both shape (N,))."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ in shape")
    return {name: get_metric(name)(predictions, targets) for name in names}
