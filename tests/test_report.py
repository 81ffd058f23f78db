"""`hashee report`: interpolation and ELUE scores by hand, tables and Pareto plots from fixture CSVs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import error_line, invoke
from hashee_cli.elue import ReferenceCurve, elue_score


def test_interpolation_by_hand():
    curve = ReferenceCurve.from_points("static", [300, 100, 200], [0.9, 0.5, 0.7])
    assert curve.macs.tolist() == [100, 200, 300]
    assert curve.score_at(150) == pytest.approx(0.6)
    assert curve.score_at(275) == pytest.approx(0.85)
    assert curve.score_at(100) == pytest.approx(0.5)
    assert curve.score_at(300) == pytest.approx(0.9)
    assert curve.score_at(99) is None
    assert curve.score_at(301) is None
    assert curve.score_at(float("nan")) is None


def test_equal_costs_are_averaged():
    curve = ReferenceCurve.from_points("static", [100, 100, 200], [0.4, 0.6, 0.8])
    assert curve.macs.tolist() == [100, 200]
    assert curve.scores.tolist() == pytest.approx([0.5, 0.8])


def test_elue_score_by_hand():
    curve = ReferenceCurve.from_points("static", [100, 200, 400], [0.5, 0.7, 0.9])
    # At 300 MACs the curve is halfway between 0.7 and 0.9, so 0.85 is 5 points above it.
    assert elue_score(0.85, 300, curve) == pytest.approx(5.0)
    assert elue_score(0.55, 150, curve) == pytest.approx(-5.0)
    assert elue_score(0.9, 500, curve) is None
    assert ReferenceCurve.from_points("one", [100], [0.5]).score_at(100) is None


def _row(run, method, macs, score, task="SST-2", **extra):
    metric = {"SST-2": "accuracy", "MRPC": "f1"}[task]
    return {
        "run": run, "task": task, "method": method, "split": "test", "model": "minilm-l6", "main_metric": metric,
        metric: score, "score": score, "macs_per_example": macs, "flops_unit": "MACs", "num_examples": 100,
        "examples_per_second": 1000.0 * 400 / macs if macs == macs else np.nan, **extra,
    }


@pytest.fixture
def fixture_csvs(tmp_path):
    """Metrics CSVs of a small comparison: static k=1..3 and full (4 layers) on SST-2, early exit, HashEE; one MRPC run."""
    files = {
        "static.csv": [_row(f"static/layers-{k}", "static", 100 * k, score, num_layers=k) for k, score in ((1, 0.5), (2, 0.7), (3, 0.8))],
        "full.csv": [_row("full", "full", 400, 0.9, num_layers=4)],
        "deebert.csv": [
            _row("deebert", "deebert", macs, score, setting=f"threshold={threshold}", threshold=threshold, exit_rule="entropy", num_layers=4)
            for threshold, macs, score in ((0.05, 350, 0.86), (0.2, 250, 0.70), (0.5, 150, 0.55))
        ],
        "pabee.csv": [_row("pabee", "pabee", 320, 0.83, setting="patience=1", patience=1, num_layers=4)],
        "hashee.csv": [
            _row("hashee-freq", "hashee", 300, 0.85, hash_method="freq", exit_layers="2 3 4", num_layers=4),
            _row("hashee-free", "hashee", np.nan, 0.88, hash_method="freq", exit_layers="3 4", num_layers=4),
        ],
        "mrpc.csv": [_row("mrpc-full", "full", 800, 0.8, task="MRPC", num_layers=4)],
    }
    paths = {}
    for name, rows in files.items():
        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        paths[name] = path
    return paths


def test_report_tables_plots_and_elue(fixture_csvs, tmp_path):
    output = tmp_path / "report"
    result = invoke("report", *fixture_csvs.values(), "--reference", "static", "--reference", "deebert", "-o", output)
    assert result.exit_code == 0, result.output

    for name in ("SST-2-test.csv", "SST-2-test.md", "MRPC-test.csv", "comparison.csv", "elue_summary.csv", "report.md"):
        assert (output / name).is_file(), name
    assert (output / "SST-2-test-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (output / "SST-2-test-pareto.svg").read_bytes()[:500]
    assert (output / "MRPC-test-pareto.png").is_file()

    table = pd.read_csv(output / "SST-2-test.csv").set_index(["series", "setting"])
    # Static curve through (100, .5) (200, .7) (300, .8) (400, .9): HashEE at 300 MACs is 5 points above it.
    assert table.loc[("hashee-freq", "exit layers 2 3 4"), "elue_vs_static"] == pytest.approx(5.0)
    assert table.loc[("pabee", "patience=1"), "elue_vs_static"] == pytest.approx(100 * (0.83 - 0.82))
    assert table.loc[("deebert", "threshold=0.5"), "elue_vs_static"] == pytest.approx(-5.0)
    # The DeeBERT curve through (150, .55) (250, .70) (350, .86): at 300 MACs it scores .78, HashEE 7 points above.
    assert table.loc[("hashee-freq", "exit layers 2 3 4"), "elue_vs_deebert"] == pytest.approx(7.0)
    # Full at 400 MACs lies beyond the DeeBERT curve: no score rather than an extrapolated one.
    assert np.isnan(table.loc[("full", "4 layers"), "elue_vs_deebert"])
    assert table.loc[("hashee-freq", "exit layers 2 3 4"), "flops_ratio_to_full"] == pytest.approx(0.75)
    # No count-flops CSV was given, so the cost axis is the analytic estimate.
    assert set(table["flops_source"]) == {"analytic"}
    assert table.loc[("hashee-freq", "exit layers 2 3 4"), "speedup_vs_full"] == pytest.approx(400 / 300)
    assert table.loc[("static", "1 layers"), "delta_vs_full"] == pytest.approx(-40.0)
    # The static table starts with the reference curve and the full model.
    assert list(pd.read_csv(output / "SST-2-test.csv")["series"][:4]) == ["static", "static", "static", "full"]

    summary = pd.read_csv(output / "elue_summary.csv")
    hashee_vs_static = summary[(summary["series"] == "hashee-freq") & (summary["reference"] == "static")].iloc[0]
    assert hashee_vs_static["points"] == 1
    assert hashee_vs_static["best_elue"] == pytest.approx(5.0)

    overview = (output / "report.md").read_text()
    assert "![Pareto plot](SST-2-test-pareto.png)" in overview
    # Bad input is listed, not fatal: the run without FLOPs, and the MRPC task with a single-point static curve.
    assert "hashee-free" in overview
    assert "has no FLOPs figure" in overview
    assert "the static curve has one point" in overview
    assert "the runs come from 2 tasks (SST-2, MRPC)" in overview


def test_report_names_a_setting_that_exits_nothing(fixture_csvs, tmp_path):
    sweep = tmp_path / "sweep.csv"
    rows = [
        _row("pabee", "pabee", macs, score, setting=f"patience={patience}", patience=patience, num_layers=4, exited_early_share=share)
        for patience, macs, score, share in ((1, 250, 0.8, 0.7), (3, 440, 0.9, 0.0))
    ]
    pd.DataFrame(rows).to_csv(sweep, index=False)
    result = invoke("report", fixture_csvs["static.csv"], fixture_csvs["full.csv"], sweep, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    overview = (tmp_path / "report" / "report.md").read_text()
    assert "pabee at patience=3 exits no example early; every example ran all layers" in overview
    assert "pabee at patience=1 exits no example" not in overview


def test_report_skips_unusable_files(fixture_csvs, tmp_path):
    wrong = tmp_path / "predictions.csv"
    pd.DataFrame({"line": [1, 2], "prediction": [0, 1]}).to_csv(wrong, index=False)
    flops = tmp_path / "flops.csv"
    pd.DataFrame([{**_row("counted", "hashee", 600, 0.85), "flops_unit": "FLOPs"}]).to_csv(flops, index=False)
    mixed = tmp_path / "mixed.csv"
    pd.DataFrame([{**_row("f1-scored", "pabee", 320, 0.8), "main_metric": "f1"}]).to_csv(mixed, index=False)

    result = invoke("--json", "report", fixture_csvs["static.csv"], fixture_csvs["full.csv"], wrong, flops, mixed, tmp_path / "missing.csv")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    reasons = {item["item"]: item["reason"] for item in payload["skipped"]}
    assert "lacks the columns run, task, method" in reasons[str(wrong)]
    assert "does not exist" in reasons[str(tmp_path / "missing.csv")]
    assert any("counts its cost in FLOPs, not MACs" in reason for reason in reasons.values())
    assert any("is scored by f1, the other rows of its task by accuracy" in reason for reason in reasons.values())
    runs = [row["run"] for row in payload["groups"][0]["rows"]]
    assert runs == ["static/layers-1", "static/layers-2", "static/layers-3", "full"]


def test_report_with_nothing_readable(tmp_path):
    wrong = tmp_path / "notes.csv"
    wrong.write_text("just,a,table\n1,2,3\n")
    result = invoke("report", wrong)
    assert result.exit_code == 1
    assert "no metrics CSV could be read" in error_line(result)


def test_unknown_reference(fixture_csvs, tmp_path):
    output = tmp_path / "report"
    result = invoke("report", *fixture_csvs.values(), "--reference", "debert", "-o", output)
    assert result.exit_code == 1
    assert "did you mean deebert?" in error_line(result)
    assert not output.exists()


def test_report_keeps_existing_files(fixture_csvs, tmp_path):
    output = tmp_path / "report"
    output.mkdir()
    (output / "report.md").write_text("my notes")
    result = invoke("report", fixture_csvs["static.csv"], "-o", output)
    assert result.exit_code == 1
    assert "already exists" in error_line(result)
    assert (output / "report.md").read_text() == "my notes"
    assert sorted(path.name for path in output.iterdir()) == ["report.md"]

    result = invoke("report", fixture_csvs["static.csv"], "-o", output, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (output / "report.md").read_text() != "my notes"
