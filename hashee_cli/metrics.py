"""Task metrics by name: accuracy, F1, correlations, per-instance multi-label rates and token accuracy."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from hashee_cli.errors import HasheeError
from hashee_cli.learnability.metrics import instance_gmean, instance_tnr, instance_tpr


def _correlation(function: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def compute(predictions: np.ndarray, targets: np.ndarray) -> float:
        # A constant vector has no defined correlation; report NaN rather than crash.
        if np.ptp(predictions) == 0 or np.ptp(targets) == 0:
            return float("nan")
        return float(function(predictions, targets)[0])

    return compute


def _token_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    labelled = targets != -100
    return float((predictions[labelled] == targets[labelled]).mean()) if labelled.any() else float("nan")


# Each metric takes (predictions, targets): class ids for classification and
# real values for regression. F1 treats class id 1 as the positive class.
# The instance_* metrics take 0/1 matrices (instances, labels) of a
# multi-label task; token_accuracy takes (sentences, positions) class ids
# with -100 at positions that carry no label.
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda predictions, targets: float(accuracy_score(targets, predictions)),
    "f1": lambda predictions, targets: float(f1_score(targets, predictions, pos_label=1, average="binary", zero_division=0)),
    "f1_macro": lambda predictions, targets: float(f1_score(targets, predictions, average="macro", zero_division=0)),
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
    "instance_tpr": instance_tpr,
    "instance_tnr": instance_tnr,
    "instance_gmean": instance_gmean,
    "token_accuracy": _token_accuracy,
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
