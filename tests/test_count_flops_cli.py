"""`hashee count-flops` end to end: checkpoints and backbones, the join with evaluate, report, and bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import error_line, invoke, write_tsv

SMALL = ["--train-limit", "96", "--dev-limit", "48", "--epochs", "1", "--batch-size", "16"]
JOIN_KEYS = ["run", "checkpoint", "task", "split"]


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, elue_dir, tmp_path_factory):
    """Tiny full, HashEE and multi-exit checkpoints fine-tuned on a few SST-2 sentences."""
    root = tmp_path_factory.mktemp("count-runs")
    model = tiny_model_dir("bert")
    table = root / "freq.json"
    assert invoke("build-hash", "--model", model, "--data-dir", elue_dir, "-o", table).exit_code == 0
    runs = {
        "full": ["--method", "full"],
        "hashee": ["--hash-table", table],
        "multi-exit": ["--method", "multi-exit"],
    }
    for name, options in runs.items():
        result = invoke("finetune", "--model", model, "--data-dir", elue_dir, *options, "-o", root / name, *SMALL)
        assert result.exit_code == 0, result.output
    return {name: root / name for name in runs}


def test_count_joins_evaluate_row(checkpoints, tmp_path):
    checkpoint = checkpoints["hashee"]
    assert invoke("evaluate", checkpoint, "-o", tmp_path / "metrics.csv", "--limit", "40").exit_code == 0
    result = invoke("count-flops", checkpoint, "-o", tmp_path / "flops.csv", "--limit", "40", "--examples", tmp_path / "examples.tsv")
    assert result.exit_code == 0, result.output
    assert "Operators left uncounted: none" in result.output

    counts = pd.read_csv(tmp_path / "flops.csv", keep_default_na=False)
    joined = pd.read_csv(tmp_path / "metrics.csv").merge(counts, on=JOIN_KEYS, suffixes=("", "_count"))
    assert len(joined) == 1
    row = joined.iloc[0]
    assert row["flops_unit_count"] == "MACs"
    assert row["num_examples_count"] == 40
    assert row["form"] == "auto"
    assert row["form_count"] == "gathered"
    assert row["uncounted_ops"] == ""
    # evaluate's analytic cost covers the same seeded subset.
    assert row["analytic_flops_mean"] == pytest.approx(row["macs_per_example"])
    assert abs(row["counted_flops_mean"] / row["analytic_flops_mean"] - 1) < 0.05
    assert row["counted_flops_median"] <= row["counted_flops_mean"] * 2
    layers = [row[f"counted_flops_layer_{layer}"] for layer in range(1, 5)]
    assert sum(layers) + row["counted_flops_other"] == pytest.approx(row["counted_flops_mean"])
    assert layers[0] > layers[-1]
    assert row["counted_ratio_to_full"] < 1.0

    examples = pd.read_csv(tmp_path / "examples.tsv", sep="\t")
    assert len(examples) == 40
    assert examples["counted_flops"].mean() == pytest.approx(row["counted_flops_mean"])
    assert set(examples["flops_unit"]) == {"MACs"}


def test_unit_flops_doubles_macs(checkpoints, tmp_path):
    output = tmp_path / "flops.csv"
    for unit in ("macs", "flops"):
        result = invoke("count-flops", checkpoints["full"], "-o", output, "--limit", "10", "--unit", unit)
        assert result.exit_code == 0, result.output
    macs, flops = pd.read_csv(output).to_dict(orient="records")
    assert (macs["flops_unit"], flops["flops_unit"]) == ("MACs", "FLOPs")
    for column in ("counted_flops_mean", "analytic_flops_median", "counted_flops_layer_2", "full_model_flops_mean"):
        assert flops[column] == 2 * macs[column], column


def test_multi_exit_pays_for_internal_classifiers(checkpoints, tmp_path):
    result = invoke("count-flops", checkpoints["multi-exit"], "-o", tmp_path / "flops.csv", "--limit", "10")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "flops.csv").iloc[0]
    assert row["method"] == "multi-exit"
    assert row["counted_flops_mean"] == pytest.approx(row["analytic_flops_mean"], rel=0.05)
    assert row["counted_flops_mean"] > row["full_model_flops_mean"]


def test_report_shows_counted_figures(checkpoints, tmp_path):
    metrics, flops = tmp_path / "metrics.csv", tmp_path / "flops.csv"
    for name in ("full", "hashee"):
        assert invoke("evaluate", checkpoints[name], "-o", metrics, "--limit", "30").exit_code == 0
        assert invoke("count-flops", checkpoints[name], "-o", flops, "--limit", "30").exit_code == 0
    result = invoke("report", metrics, flops, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "report" / "comparison.csv").set_index("method")
    assert table.loc["full", "counted_ratio_to_full"] == 1.0
    assert table.loc["hashee", "counted_ratio_to_full"] < 1.0
    assert table.loc["hashee", "counted_flops_unit"] == "MACs"
    assert table.loc["hashee", "counted_examples"] == 30
    assert "counted_flops_per_example" in (tmp_path / "report" / "comparison.md").read_text()


def test_minilm_last_layer_hash_costs_full(elue_dir, tmp_path):
    """The packaged MiniLM on SST-2: a one-bucket hash at layer 6 costs the full model; an earlier one costs less."""
    output = tmp_path / "flops.csv"
    common = ["--data-dir", elue_dir, "--limit", "12", "-o", output]
    assert invoke("count-flops", "--method", "full", *common).exit_code == 0
    for exit_layers in ("6", "2"):
        table = tmp_path / f"hash-{exit_layers}.json"
        assert invoke("build-hash", "--data-dir", elue_dir, "--exit-layers", exit_layers, "-o", table).exit_code == 0
        result = invoke("count-flops", "--hash-table", table, *common)
        assert result.exit_code == 0, result.output
    rows = pd.read_csv(output).set_index("run")
    full = rows.loc["full", "counted_flops_mean"]
    assert pd.isna(rows.loc["full", "checkpoint"])  # counted from the backbone, no checkpoint
    assert abs(rows.loc["hash-6", "counted_flops_mean"] / full - 1) < 0.02
    assert rows.loc["hash-2", "counted_flops_mean"] < 0.8 * full
    for run in rows.index:
        assert abs(rows.loc[run, "counted_vs_analytic"]) < 0.05, run


def test_empty_split_is_rejected(checkpoints, tmp_path):
    empty = write_tsv(tmp_path / "empty.tsv", ["sentence", "label"], [])
    result = invoke("count-flops", checkpoints["hashee"], "--test-file", empty, "-o", tmp_path / "flops.csv")
    assert result.exit_code == 1
    assert "empty.tsv has no examples" in error_line(result)
    assert not (tmp_path / "flops.csv").exists()


def test_sequence_longer_than_positions_is_rejected(checkpoints, tmp_path):
    test_file = write_tsv(tmp_path / "long.tsv", ["sentence", "label"], [["fine", "1"], [" ".join(["long"] * 300), "0"]])
    output = tmp_path / "flops.csv"
    result = invoke("count-flops", checkpoints["hashee"], "--test-file", test_file, "--max-seq-length", "200", "-o", output)
    assert result.exit_code == 1
    assert "long.tsv line 3: the example has 200 tokens but the model has 128 positions" in error_line(result)
    assert not output.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--unit", "gflops"], "unknown --unit 'gflops'"),
        (["--hash-table", "table.json"], "drop --hash-table"),
    ],
)
def test_bad_options_are_rejected(checkpoints, tmp_path, options, message):
    output = tmp_path / "flops.csv"
    result = invoke("count-flops", checkpoints["hashee"], "--limit", "5", "-o", output, *options)
    assert result.exit_code == 1
    assert message in error_line(result)
    assert not output.exists()
