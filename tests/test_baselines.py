"""The static, DeeBERT and PABEE baselines through `hashee finetune` and `hashee evaluate`, with a tiny model and real data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import error_line, invoke

SMALL = ["--train-limit", "96", "--dev-limit", "48", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture(scope="module")
def full_checkpoint(tiny_bert, elue_dir, runs):
    output = runs / "full"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "full", "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="module")
def deebert_checkpoint(tiny_bert, elue_dir, runs, full_checkpoint):
    output = runs / "deebert"
    result = invoke(
        "finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "deebert", "--init-from", full_checkpoint, "-o", output, *SMALL
    )
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="module")
def pabee_checkpoint(tiny_bert, elue_dir, runs):
    output = runs / "pabee"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "pabee", "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    return output


def test_static_curve_in_one_command(tiny_bert, elue_dir, tmp_path):
    output = tmp_path / "static"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "static", "--depths", "1,3", "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    manifest = json.loads((output / "static_curve.json").read_text())
    assert [member["depth"] for member in manifest["members"]] == [1, 3]
    for depth in (1, 3):
        settings = json.loads((output / f"layers-{depth}" / "hashee_config.json").read_text())
        assert settings["method"] == "static"
        assert settings["num_layers"] == depth
        assert json.loads((output / f"layers-{depth}" / "config.json").read_text())["num_hidden_layers"] == depth

    metrics = tmp_path / "m.csv"
    result = invoke("evaluate", output, "--limit", "60", "-o", metrics)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(metrics)
    assert list(rows["num_layers"]) == [1, 3]
    assert list(rows["run"]) == ["static/layers-1", "static/layers-3"]
    assert rows.loc[0, "macs_per_example"] < rows.loc[1, "macs_per_example"]


def test_deebert_second_stage_keeps_the_backbone(deebert_checkpoint, full_checkpoint):
    before = load_file(full_checkpoint / "model.safetensors")
    after = load_file(deebert_checkpoint / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        assert bool((before[name] == after[name]).all()), name
    assert (deebert_checkpoint / "exit_heads.safetensors").is_file()
    history = pd.read_csv(deebert_checkpoint / "epoch_metrics.csv")
    assert list(history["stage"]) == [1, 2]
    # Stage 2 is scored by the internal classifiers of layers 1..3 of the 4-layer model.
    stage_two = history[history["stage"] == 2].iloc[0]
    mean = sum(stage_two[f"dev_accuracy_layer_{layer}"] for layer in (1, 2, 3)) / 3
    assert stage_two["dev_accuracy"] == pytest.approx(mean)
    settings = json.loads((deebert_checkpoint / "hashee_config.json").read_text())
    assert settings["init_from"] == str(full_checkpoint)


def test_deebert_sweep_replays_every_threshold(deebert_checkpoint, tmp_path):
    metrics = tmp_path / "m.csv"
    predictions = tmp_path / "p.tsv"
    result = invoke(
        "evaluate", deebert_checkpoint, "--limit", "80", "--thresholds", "0,0.3,0.6931", "--early-exit",
        "-o", metrics, "--predictions", predictions,
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(metrics)
    assert list(rows["threshold"]) == [0.0, 0.3, 0.6931]
    assert set(rows["exit_rule"]) == {"entropy"}
    assert set(rows["exit_mode"]) == {"online"}
    assert (rows["replay_agreement"] == 1.0).all()
    assert (rows["examples_per_second"] > 0).all()
    # Threshold 0 exits nothing, which the command reports; lower thresholds cost more.
    assert rows.loc[0, "exited_early_share"] == 0
    assert rows.loc[0, "mean_example_exit_layer"] == 4
    assert "No example exited early at: threshold=0" in result.output
    assert list(rows["macs_per_example"]) == sorted(rows["macs_per_example"], reverse=True)
    written = pd.read_csv(predictions, sep="\t")
    assert len(written) == 3 * 80
    assert set(written["exit_layer"]) <= {1, 2, 3, 4}


def test_pabee_defaults_to_patience(pabee_checkpoint, tmp_path):
    metrics = tmp_path / "m.csv"
    result = invoke("evaluate", pabee_checkpoint, "--limit", "80", "-o", metrics)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(metrics)
    assert list(rows["patience"]) == [1, 2, 3]
    assert set(rows["exit_mode"]) == {"replay"}
    assert rows["mean_example_exit_layer"].is_monotonic_increasing
    # Patience 1 can exit at layer 2 at the earliest.
    assert rows.loc[0, "mean_example_exit_layer"] >= 2


def test_pabee_regression_with_tolerance(tiny_bert, elue_dir, tmp_path):
    output = tmp_path / "stsb"
    result = invoke("finetune", "--model", tiny_bert, "--task", "STS-B", "--data-dir", elue_dir, "--method", "pabee", "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    metrics = tmp_path / "m.csv"
    result = invoke("evaluate", output, "--limit", "60", "--tolerance", "0.5", "--early-exit", "-o", metrics)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(metrics)
    assert set(rows["tolerance"]) == {0.5}
    assert (rows["replay_agreement"] == 1.0).all()
    assert {"pearson", "spearman"} <= set(rows.columns)

    result = invoke("evaluate", output, "--exit-rule", "entropy", "-o", tmp_path / "entropy.csv")
    assert result.exit_code == 1
    assert "use --exit-rule patience" in error_line(result)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--patience", "0"], "patience 0 is invalid"),
        (["--patience", "1,7"], "patience 7 can never be reached with 4 layers"),
        (["--exit-rule", "entropy", "--thresholds", "0.1,-0.2"], "entropy threshold -0.2 is invalid"),
        (["--exit-rule", "entropy", "--thresholds", "0.1,x"], "--thresholds takes numbers separated by commas, not 'x'"),
        (["--exit-rule", "entrop"], "did you mean entropy?"),
    ],
)
def test_sweep_rejects_invalid_settings(pabee_checkpoint, tmp_path, options, message):
    metrics = tmp_path / "m.csv"
    result = invoke("evaluate", pabee_checkpoint, *options, "-o", metrics)
    assert result.exit_code == 1
    assert message in error_line(result)
    assert not metrics.exists()


def test_exit_rule_on_model_without_classifiers(full_checkpoint, tmp_path):
    result = invoke("evaluate", full_checkpoint, "--exit-rule", "patience", "-o", tmp_path / "m.csv")
    assert result.exit_code == 1
    assert "has no internal classifiers" in error_line(result)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "full", "--depths", "1,2"], "--depths applies to --method static only"),
        (["--method", "static", "--depths", "1,5"], "--depths 5 is outside 1..4"),
        (["--method", "static", "--num-layers", "2"], "give the depths with --depths"),
        (["--method", "pabee", "--init-from", "somewhere"], "--init-from applies to --method deebert only"),
        (["--method", "debert"], "did you mean deebert?"),
    ],
)
def test_finetune_rejects_bad_baseline_options(tiny_bert, elue_dir, tmp_path, options, message):
    output = tmp_path / "run"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, *options, "-o", output, *SMALL)
    assert result.exit_code == 1
    assert message in error_line(result)
    assert not output.exists()


def test_deebert_init_from_must_be_a_full_model(tiny_bert, elue_dir, pabee_checkpoint, tmp_path):
    output = tmp_path / "run"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "deebert", "--init-from", pabee_checkpoint, "-o", output, *SMALL)
    assert result.exit_code == 1
    assert "was trained with --method pabee" in error_line(result)
    assert not output.exists()
