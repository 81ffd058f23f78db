"""`hashee count-flops` on static curves and on DeeBERT and PABEE checkpoints, and the report that joins the counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import invoke
from hashee_cli.counting import CountSettings, prepare_count
from hashee_cli.exit_counting import SweepOptions, count_runs, exit_costs, exit_target
from hashee_cli.exit_sweep import record_layer_logits
from hashee_cli.flop_counting import CountingTarget, count_split
from hashee_cli.modeling.early_exit import EarlyExitModel, replay_exits
from hashee_cli.modeling.exit_rules import EntropyRule

SMALL = ["--train-limit", "96", "--dev-limit", "48", "--epochs", "1", "--batch-size", "16"]
THRESHOLDS = "0,0.3,0.6931"


@pytest.fixture(scope="module")
def runs(tiny_model_dir, elue_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline-flops")
    model = tiny_model_dir("bert")
    commands = {
        "full": ["--method", "full"],
        "static": ["--method", "static", "--depths", "1,3"],
        "pabee": ["--method", "pabee"],
    }
    for name, options in commands.items():
        result = invoke("finetune", "--model", model, "--data-dir", elue_dir, *options, "-o", folder / name, *SMALL)
        assert result.exit_code == 0, result.output
    result = invoke(
        "finetune", "--model", model, "--data-dir", elue_dir, "--method", "deebert", "--init-from", folder / "full",
        "-o", folder / "deebert", *SMALL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def test_replayed_cost_equals_count_of_real_early_exit(runs):
    """The cost of a setting, built from the dense count, equals fvcore's count of the real early-exit forward."""
    settings = CountSettings(checkpoint=str(runs / "deebert"), limit=12, batch_size=5)
    prepared = prepare_count(settings)
    model = prepared.loaded.model
    dense_target = exit_target(model)
    dense = count_split(dense_target, prepared.encoded, prepared.pad_token_id, batch_size=5)
    record = record_layer_logits(model, prepared.encoded, 5, prepared.pad_token_id)

    # A trace keeps only work that reaches its outputs, and an internal classifier's logits only steer
    # the exit decision; adding them to the output (times 0) keeps every classifier the forward ran.
    ran_heads = []
    hooks = [head.register_forward_hook(lambda module, inputs, output: ran_heads.append(output)) for head in model.exit_heads]
    seen_exits = set()
    for threshold in (0.0, 0.3, 0.6931):
        rule = EntropyRule(threshold, 2)
        runner_model = EarlyExitModel(model, rule)

        def forward(batch, runner_model=runner_model):
            ran_heads.clear()
            output = runner_model(**batch)
            classifier_sum = sum(logits.sum() for logits in ran_heads) * 0
            # Every token of an example leaves with it: (B,) -> (B, T).
            return output.logits + classifier_sum, batch["attention_mask"].long() * output.exit_layers[:, None]

        real = CountingTarget(
            model, forward, dense_target.analytic_layers, dense_target.analytic_other, dense_target.layer_modules, "early exit"
        )
        counted_real = count_split(real, prepared.encoded, prepared.pad_token_id, batch_size=5)
        exits = replay_exits(record.all_logits, rule).exit_layers.numpy()
        seen_exits.update(exits.tolist())
        replayed, _ = exit_costs(dense, exits)
        np.testing.assert_allclose(replayed, counted_real.counted, rtol=1e-9)
    for hook in hooks:
        hook.remove()
    # The thresholds make examples leave at the first layer and run to the last.
    assert {1, model.num_layers} <= seen_exits


def test_deebert_counts_every_threshold_of_the_sweep(runs, tmp_path):
    flops, metrics = tmp_path / "flops.csv", tmp_path / "metrics.csv"
    result = invoke("count-flops", runs / "deebert", "--limit", "20", "--thresholds", THRESHOLDS, "-o", flops)
    assert result.exit_code == 0, result.output
    assert invoke("evaluate", runs / "deebert", "--limit", "20", "--thresholds", THRESHOLDS, "-o", metrics).exit_code == 0
    counted, evaluated = pd.read_csv(flops), pd.read_csv(metrics)
    assert list(counted["setting"]) == list(evaluated["setting"])
    assert list(counted["threshold"]) == [0.0, 0.3, 0.6931]
    # Threshold 0 runs every layer and every classifier: more than the full model, which has one classifier.
    assert counted.loc[0, "counted_ratio_to_full"] > 1
    # A higher threshold exits earlier and costs less.
    assert list(counted["counted_flops_mean"]) == sorted(counted["counted_flops_mean"], reverse=True)
    # fvcore and the analytic model agree on the same exits, classifiers included.
    assert (counted["counted_vs_analytic"].abs() < 0.01).all()
    # The count follows the sweep's exits: its analytic figure is evaluate's.
    np.testing.assert_allclose(counted["analytic_flops_mean"], evaluated["macs_per_example"], rtol=1e-9)


def test_static_and_pabee_rows_join_the_report(runs, tmp_path):
    flops, metrics = tmp_path / "flops.csv", tmp_path / "metrics.csv"
    for name in ("full", "static", "pabee"):
        assert invoke("evaluate", runs / name, "--limit", "20", "-o", metrics).exit_code == 0
        result = invoke("count-flops", runs / name, "--limit", "20", "-o", flops)
        assert result.exit_code == 0, result.output
    counted = pd.read_csv(flops)
    assert list(counted["run"]) == ["full", "static/layers-1", "static/layers-3", "pabee", "pabee", "pabee"]
    assert list(counted["setting"].fillna("")) == ["", "", "", "patience=1", "patience=2", "patience=3"]

    result = invoke("report", metrics, flops, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "report" / "SST-2-test.csv")
    assert set(table["flops_source"]) == {"counted"}
    assert table["flops_per_example"].notna().all()
    by_run = table.set_index(["run", "setting"])
    assert by_run.loc[("full", "4 layers"), "flops_ratio_to_full"] == 1.0
    assert by_run.loc[("static/layers-1", "1 layers"), "flops_ratio_to_full"] < 0.5
    overview = (tmp_path / "report" / "report.md").read_text()
    assert "matches no metrics row" not in overview
    assert "has no FLOPs figure" not in overview


def test_count_without_a_row_to_join_is_listed(runs, tmp_path):
    flops, metrics = tmp_path / "flops.csv", tmp_path / "metrics.csv"
    assert invoke("evaluate", runs / "full", "--limit", "20", "-o", metrics).exit_code == 0
    assert invoke("count-flops", runs / "pabee", "--limit", "20", "--patience", "2", "-o", flops).exit_code == 0
    result = invoke("report", metrics, flops, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "FLOPs count of pabee [patience=2] (SST-2 test): matches no metrics row" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--patience", "0"], "patience 0 is invalid"),
        (["--exit-rule", "entropy", "--thresholds", "-0.1"], "entropy threshold -0.1 is invalid"),
        (["--thresholds", "0.2"], "--thresholds applies to the entropy rule"),
    ],
)
def test_count_rejects_invalid_settings(runs, tmp_path, options, message):
    result = invoke("count-flops", runs / "pabee", "--limit", "4", *options, "-o", tmp_path / "flops.csv")
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "flops.csv").exists()


def test_static_curve_takes_no_exit_options(runs, tmp_path):
    result = invoke("count-flops", runs / "static", "--patience", "1", "-o", tmp_path / "flops.csv")
    assert result.exit_code != 0
    assert "is a static curve" in result.output


def test_count_runs_uses_the_method_rule(runs):
    results = count_runs(CountSettings(checkpoint=str(runs / "pabee"), limit=6), SweepOptions())
    assert [result.row["patience"] for result in results] == [1, 2, 3]
    exits = [result.row["mean_example_exit_layer"] for result in results]
    # A longer patience can only keep an example longer.
    assert exits == sorted(exits)
