"""Scores of difficulty probes, the baselines they are compared with, and their expected values.

Human-defined difficulty is one 0/1 label per example, scored with accuracy
and F1 (class 1, "difficult", is the positive class).

Model-defined difficulty is a vector of L zeros and ones per example, one per
layer of a multi-exit model. For each instance i with true vector y_i and
prediction p_i:

    TPR_i = |{l : p_il = 1 and y_il = 1}| / |{l : y_il = 1}|
    TNR_i = |{l : p_il = 0 and y_il = 0}| / |{l : y_il = 0}|

An instance without positive layers has no defined TPR, so TPR is
macro-averaged over the instances with at least one positive layer. TNR is
averaged over those with at least one negative layer in the same way. The
G-mean is the geometric mean of the two averages, sqrt(TPR * TNR).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import recall_score

HUMAN_METRICS = ("accuracy", "f1")
MODEL_METRICS = ("instance_tpr", "instance_tnr", "instance_gmean")


def _check_matrices(predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if predictions.ndim != 2 or predictions.shape != targets.shape:
        raise ValueError(
            f"multi-label predictions {predictions.shape} and targets {targets.shape} must both be (instances, layers)"
        )
    return predictions, targets


def instance_tpr(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Return the true positive rate per instance, macro-averaged over instances with a positive layer."""
    predictions, targets = _check_matrices(predictions, targets)
    # zero_division=nan drops instances without positives from the average (scikit-learn >= 1.3).
    return float(recall_score(targets, predictions, average="samples", zero_division=np.nan))


def instance_tnr(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Return the true negative rate per instance, macro-averaged over instances with a negative layer."""
    predictions, targets = _check_matrices(predictions, targets)
    # The TNR is the recall of the negative class: swap zeros and ones.
    return float(recall_score(1 - targets, 1 - predictions, average="samples", zero_division=np.nan))


def instance_gmean(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Return sqrt(TPR * TNR) of the macro-averaged per-instance rates."""
    return math.sqrt(instance_tpr(predictions, targets) * instance_tnr(predictions, targets))


def positive_rates(labels: np.ndarray) -> np.ndarray:
    """Return the share of 1s: one value for a label vector (N,), one per layer for a matrix (N, L)."""
    return np.asarray(labels, dtype=np.float64).mean(axis=0)


def majority_guess(train_labels: np.ndarray, num_test: int) -> np.ndarray:
    """Predict the training split's majority class (per layer for a matrix) for ``num_test`` instances.

    A tie predicts 1.
    """
    majority = (positive_rates(train_labels) >= 0.5).astype(np.int64)
    return np.broadcast_to(majority, (num_test, *np.shape(majority))).copy()


def random_guess(rates: np.ndarray | float, num_test: int, seed: int) -> np.ndarray:
    """Predict 1 with probability ``rates`` (per layer for a vector of rates), independently per instance."""
    rates = np.asarray(rates, dtype=np.float64)
    draws = np.random.default_rng(seed).random((num_test, *rates.shape))
    return (draws < rates).astype(np.int64)


def expected_random_human(rate: float, targets: np.ndarray) -> dict[str, float]:
    """Return the exact expected accuracy and F1 of guessing 1 with probability ``rate``.

    With P positives and N negatives in ``targets``, the true positives are
    Binomial(P, rate) and the false positives Binomial(N, rate), independent,
    and F1 = 2 TP / (TP + P + FP); the expectation sums over both.
    """
    targets = np.asarray(targets, dtype=np.int64)
    num_pos = int(targets.sum())
    num_neg = len(targets) - num_pos
    accuracy = (rate * num_pos + (1 - rate) * num_neg) / len(targets)

    true_pos = np.arange(num_pos + 1)
    false_pos = np.arange(num_neg + 1)
    joint = np.outer(stats.binom.pmf(true_pos, num_pos, rate), stats.binom.pmf(false_pos, num_neg, rate))
    denominator = true_pos[:, None] + num_pos + false_pos[None, :]  # (P + 1, N + 1)
    # F1 is 0 when nothing is predicted positive or there are no positives (scikit-learn's zero_division=0).
    f1 = np.divide(2 * true_pos[:, None], denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return {"accuracy": float(accuracy), "f1": float((joint * f1).sum())}


def expected_random_model(rates: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Return the expected TPR and TNR of guessing 1 for layer l with probability ``rates[l]``.

    Both averages are linear in the guesses, so their expectations are exact:
    E[TPR_i] is the mean of rates[l] over the positive layers of instance i,
    E[TNR_i] the mean of 1 - rates[l] over its negative layers.
    ``instance_gmean`` is sqrt(E[TPR] * E[TNR]). The expected G-mean differs
    from it by a Jensen gap that shrinks as the number of instances grows.
    """
    rates = np.asarray(rates, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    positives = targets.sum(axis=1)  # (N,)
    negatives = targets.shape[1] - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = (targets @ rates) / positives  # (N,), NaN without positives
        tnr = ((1 - targets) @ (1 - rates)) / negatives
    expected_tpr = float(np.nanmean(tpr)) if (positives > 0).any() else math.nan
    expected_tnr = float(np.nanmean(tnr)) if (negatives > 0).any() else math.nan
    return {
        "instance_tpr": expected_tpr,
        "instance_tnr": expected_tnr,
        "instance_gmean": math.sqrt(expected_tpr * expected_tnr),
    }


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation (NaN for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return float(array.mean()), std


def beats_by_two_std(probe: list[float], baseline: list[float]) -> bool | None:
    """Return whether the probe's mean exceeds the baseline's by more than two standard deviations.

    The standard deviation is that of the difference between one probe run and
    one baseline run, sqrt(std_probe^2 + std_baseline^2), both taken over
    seeds. Returns None when either side has fewer than two seeds.
    """
    if len(probe) < 2 or len(baseline) < 2:
        return None
    probe_mean, probe_std = mean_and_std(probe)
    baseline_mean, baseline_std = mean_and_std(baseline)
    return probe_mean - baseline_mean > 2 * math.hypot(probe_std, baseline_std)
