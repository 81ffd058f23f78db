"""Difficulty probes: metrics on hand-checked cases, baselines and their expected values, and reading label files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_tsv
from hashee_cli.errors import DataError
from hashee_cli.learnability import metrics
from hashee_cli.learnability.difficulty import load_difficulty, resolve_files
from hashee_cli.learnability.experiment import BASELINES, ProbeResult, ProbeSettings, run_probes
from hashee_cli.metrics import compute_metrics

TARGETS = np.array([[1, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
GUESSES = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1], [0, 1, 0, 0]])


def test_instance_rates_hand_checked():
    # TPR per instance: 1/2, 2/3, 3/4; the last instance has no positive layer and is left out.
    expected_tpr = (1 / 2 + 2 / 3 + 3 / 4) / 3
    # TNR per instance: 1/2, 1/1, (none: all positive), 3/4.
    expected_tnr = (1 / 2 + 1 + 3 / 4) / 3
    assert metrics.instance_tpr(GUESSES, TARGETS) == pytest.approx(expected_tpr)
    assert metrics.instance_tnr(GUESSES, TARGETS) == pytest.approx(expected_tnr)
    assert metrics.instance_gmean(GUESSES, TARGETS) == pytest.approx(math.sqrt(expected_tpr * expected_tnr))


def test_instance_rates_extremes():
    assert metrics.instance_gmean(TARGETS, TARGETS) == 1.0
    assert metrics.instance_tpr(1 - TARGETS, TARGETS) == 0.0
    assert metrics.instance_tnr(1 - TARGETS, TARGETS) == 0.0
    # Guessing 1 everywhere finds every positive and no negative.
    ones = np.ones_like(TARGETS)
    assert metrics.instance_tpr(ones, TARGETS) == 1.0
    assert metrics.instance_tnr(ones, TARGETS) == 0.0


def test_instance_rates_in_metric_registry():
    scores = compute_metrics(("instance_tpr", "instance_tnr", "instance_gmean"), GUESSES, TARGETS)
    assert scores["instance_tpr"] == pytest.approx(metrics.instance_tpr(GUESSES, TARGETS))
    assert scores["instance_gmean"] == pytest.approx(metrics.instance_gmean(GUESSES, TARGETS))


def test_instance_rates_reject_vectors():
    with pytest.raises(ValueError, match="instances, layers"):
        metrics.instance_tpr(np.array([1, 0]), np.array([1, 1]))


def test_majority_guess_per_layer():
    train = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 0, 0]])  # rates 0.75, 0.25, 0.5
    guess = metrics.majority_guess(train, 2)
    assert guess.tolist() == [[1, 0, 1], [1, 0, 1]]  # a tie predicts 1
    assert metrics.majority_guess(np.array([0, 0, 1]), 3).tolist() == [0, 0, 0]


def test_random_guess_follows_rates():
    guess = metrics.random_guess(np.array([0.0, 1.0, 0.3]), 20_000, seed=0)
    assert guess.shape == (20_000, 3)
    assert guess[:, 0].sum() == 0
    assert guess[:, 1].sum() == 20_000
    assert guess[:, 2].mean() == pytest.approx(0.3, abs=0.015)
    assert (metrics.random_guess(0.3, 5, seed=1) == metrics.random_guess(0.3, 5, seed=1)).all()


def test_expected_random_model_hand_checked():
    rates = np.array([0.5, 0.25])
    targets = np.array([[1, 0], [1, 1], [0, 0]])
    expected = metrics.expected_random_model(rates, targets)
    # E[TPR]: instance 1 -> 0.5, instance 2 -> (0.5 + 0.25) / 2; instance 3 has no positive.
    assert expected["instance_tpr"] == pytest.approx((0.5 + 0.375) / 2)
    # E[TNR]: instance 1 -> 1 - 0.25, instance 3 -> (0.5 + 0.75) / 2; instance 2 has no negative.
    assert expected["instance_tnr"] == pytest.approx((0.75 + 0.625) / 2)
    assert expected["instance_gmean"] == pytest.approx(math.sqrt(0.4375 * 0.6875))


def test_expected_random_human_hand_checked():
    targets = np.array([1, 0])
    expected = metrics.expected_random_human(0.5, targets)
    assert expected["accuracy"] == pytest.approx(0.5)
    # F1 = 2TP / (TP + P + FP): (TP, FP) = (1, 0) gives 1 and (1, 1) gives 2/3, each with probability 1/4.
    assert expected["f1"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    assert metrics.expected_random_human(0.3, np.array([1, 1, 0, 0, 0]))["accuracy"] == pytest.approx((0.3 * 2 + 0.7 * 3) / 5)


def test_expected_random_human_matches_simulation():
    targets = np.array([1] * 30 + [0] * 70)
    expected = metrics.expected_random_human(0.4, targets)
    draws = [metrics.random_guess(0.4, len(targets), seed) for seed in range(1000)]
    f1 = [compute_metrics(("f1",), guess, targets)["f1"] for guess in draws]
    accuracy = [float((guess == targets).mean()) for guess in draws]
    # Three standard errors of the simulated mean.
    assert np.mean(f1) == pytest.approx(expected["f1"], abs=3 * np.std(f1) / math.sqrt(len(f1)))
    assert np.mean(accuracy) == pytest.approx(expected["accuracy"], abs=3 * np.std(accuracy) / math.sqrt(len(accuracy)))


def test_expected_random_model_matches_simulation_on_snli(shared_data):
    train_file, test_file = resolve_files("model", shared_data / "difficulty", None, None)
    data = load_difficulty("model", train_file, test_file)
    rates = metrics.positive_rates(data.train.labels)
    expected = metrics.expected_random_model(rates, data.test.labels)
    draws = [metrics.random_guess(rates, len(data.test), seed) for seed in range(80)]
    for name in ("instance_tpr", "instance_tnr", "instance_gmean"):
        simulated = [compute_metrics((name,), guess, data.test.labels)[name] for guess in draws]
        # TPR and TNR are exact; the G-mean of expected rates is within a Jensen gap far below this bound.
        bound = 3 * np.std(simulated) / math.sqrt(len(simulated)) + (1e-3 if name == "instance_gmean" else 0)
        assert np.mean(simulated) == pytest.approx(expected[name], abs=bound)


def test_beats_by_two_std():
    assert metrics.beats_by_two_std([0.70, 0.71, 0.69], [0.50, 0.51, 0.49]) is True
    assert metrics.beats_by_two_std([0.52, 0.55, 0.49], [0.50, 0.53, 0.47]) is False
    assert metrics.beats_by_two_std([0.9], [0.5, 0.5]) is None


def _model_file(path, rows):
    return write_tsv(path, ["sentence1", "sentence2", "label"], [[f"premise {i}", f"hypothesis {i}", label] for i, label in enumerate(rows)])


@pytest.mark.parametrize(("train_vector", "tpr", "tnr"), [("[1, 0]", (1 + 1 + 0.5) / 3, 1.0), ("[0, 1]", 0.5 / 3, 0.0)])
def test_random_baseline_uses_training_rates(tmp_path, train_vector, tpr, tnr):
    # Every training row has the same vector, so the random guess repeats it on every test row.
    _model_file(tmp_path / "train.txt", [train_vector] * 10)
    _model_file(tmp_path / "test.txt", ["[1, 0]", "[1, 0]", "[1, 1]"])
    result = run_probes(ProbeSettings(difficulty="model", data_dir=str(tmp_path), probes=[], seeds=[1, 2]))
    assert result.train_positive_rate == [int(value) for value in train_vector.strip("[]").split(", ")]
    rows = result.rows.set_index(["probe", "seed"])
    for probe in ("random", "random-expected"):
        for seed in (1, 2):
            assert rows.loc[(probe, seed), "instance_tpr"] == pytest.approx(tpr)
            assert rows.loc[(probe, seed), "instance_tnr"] == pytest.approx(tnr)
    assert rows.loc[("random", 1), "num_train"] == 9
    assert rows.loc[("random", 1), "num_dev"] == 1


def test_shipped_snli_files_load(shared_data):
    for kind, num_train, num_test in (("human", 1237, 1000), ("model", 8000, 1842)):
        data = load_difficulty(kind, *resolve_files(kind, shared_data / "difficulty", None, None))
        assert (len(data.train), len(data.test)) == (num_train, num_test)
        assert len(data.train.texts) == 2
    assert data.num_layers == 12
    assert data.train.labels.shape == (8000, 12)
    assert data.task.main_metric == "instance_gmean"


@pytest.mark.parametrize(
    ("kind", "rows", "message"),
    [
        ("model", ["[1, 0, 1]", "[1, 1]"], "train.txt line 3: the label vector has 2 entries, but "),
        ("model", ["[1, 0, 1]", "[1, 2, 0]"], "train.txt line 3: entry 2 of the label vector [1, 2, 0] is '2', not 0 or 1"),
        ("model", ["[1, 0, 1]", "1 0 1"], "train.txt line 3: label '1 0 1' is not a list of 0/1 values"),
        ("human", ["1", "0", "2"], "train.txt line 4: difficulty label '2' is not 0 or 1"),
        ("human", ["1", "[1, 0]"], "for one 0/1 per layer use --difficulty model"),
        ("human", ["1", "1", "1"], "train.txt: every row has difficulty label 1; the probe needs examples of both classes"),
        ("model", ["[1, 1]", "[1, 1]"], "train.txt: every entry of every label vector is 1"),
    ],
)
def test_bad_label_files(tmp_path, kind, rows, message):
    write_tsv(tmp_path / "train.txt", ["sentence1", "sentence2", "label"], [["a", "b", row] for row in rows])
    # A valid test file with both classes, so that only the training file is at fault.
    write_tsv(tmp_path / "test.txt", ["sentence1", "sentence2", "label"], [["a", "b", rows[0]], ["c", "d", rows[0].replace("1", "0")]])
    with pytest.raises(DataError) as error:
        load_difficulty(kind, tmp_path / "train.txt", tmp_path / "test.txt")
    assert message in str(error.value)


def test_layer_count_from_option_and_config(tmp_path):
    write_tsv(tmp_path / "train.txt", ["sentence1", "label"], [["a", "[1, 0, 1]"], ["b", "[0, 1, 1]"]])
    write_tsv(tmp_path / "test.txt", ["sentence1", "label"], [["c", "[1, 0]"]])
    with pytest.raises(DataError, match=r"train.txt line 2: the label vector has 3 entries, but the multi-exit model has 12 layers \(--layers\)"):
        load_difficulty("model", tmp_path / "train.txt", tmp_path / "test.txt", num_layers=12)
    with pytest.raises(DataError, match=r"test.txt line 2: the label vector has 2 entries, but .*train.txt has 3"):
        load_difficulty("model", tmp_path / "train.txt", tmp_path / "test.txt")
    (tmp_path / "labels_config.json").write_text('{"num_layers": 6}')
    with pytest.raises(DataError, match=r"has 3 entries, but the multi-exit model has 6 layers \(.*labels_config.json\)"):
        load_difficulty("model", tmp_path / "train.txt", tmp_path / "test.txt")


def test_empty_split(tmp_path):
    write_tsv(tmp_path / "train.txt", ["sentence1", "label"], [["a", "1"], ["b", "0"]])
    write_tsv(tmp_path / "test.txt", ["sentence1", "label"], [])
    with pytest.raises(DataError, match="test.txt has no examples"):
        load_difficulty("human", tmp_path / "train.txt", tmp_path / "test.txt")


def _result(scores: dict[str, list[float]]) -> ProbeResult:
    rows = pd.DataFrame(
        [
            {"probe": probe, "kind": "baseline" if probe in BASELINES else "probe", "seed": seed, "accuracy": value, "f1": value}
            for probe, values in scores.items()
            for seed, value in enumerate(values)
        ]
    )
    return ProbeResult("human", ("accuracy", "f1"), "accuracy", rows, Path("train.txt"), Path("test.txt"), None, [0.5])


def test_summary_line_names_winners():
    baselines = {"majority": [0.5, 0.5, 0.5], "random": [0.50, 0.51, 0.49], "random-expected": [0.5, 0.5, 0.5]}
    result = _result({**baselines, "bow": [0.70, 0.71, 0.69], "bilstm": [0.52, 0.49, 0.50]})
    summary = result.summary().set_index("probe")
    assert summary.loc["bow", "beats_random_by_2_std"]
    assert not summary.loc["bilstm", "beats_random_by_2_std"]
    assert summary.loc["bow", "delta_vs_random"] == pytest.approx(0.2)
    line = result.summary_line()
    assert line.startswith("bow beats the random guess by more than two standard deviations of accuracy")
    assert "bow 0.7000 ± 0.0100" in line
    assert "bilstm" not in line

    line = _result({**baselines, "bilstm": [0.52, 0.49, 0.50]}).summary_line()
    assert line.startswith("No probe beats the random guess")
    assert "best: bilstm 0.5033" in line


def test_summary_line_one_seed():
    result = _result({"majority": [0.5], "random": [0.5], "random-expected": [0.5], "bow": [0.9]})
    assert "pass two or more --seeds" in result.summary_line()
