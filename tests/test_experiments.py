"""Experiment configs: validation, the planned commands, and one tiny config run end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hashee_cli.cli import app
from hashee_cli.errors import HasheeError
from hashee_cli.experiments import load_config, parse_config, plan_experiment

runner = CliRunner()
REPOSITORY = Path(__file__).resolve().parents[1]


def _config(**changes) -> dict:
    config = {
        "output_dir": "runs/x",
        "data_dir": "data/elue",
        "training": {"epochs": 1, "train_limit": 100},
        "tasks": {"SST-2": {}},
        "methods": {"full": {}, "deebert": {"thresholds": [0.1, 0.2]}, "hashee": [{"hash": "freq", "exit_layers": [2, 4]}]},
    }
    config.update(changes)
    return config


@pytest.mark.parametrize("name", ["comparison-cpu.yaml", "comparison-gpu.yaml"])
def test_shipped_configs_are_valid(name):
    config, _ = load_config(REPOSITORY / "experiments" / name)
    assert {"full", "static", "deebert", "pabee"} <= set(config.methods.names())
    assert {setting.hash for setting in config.methods.hashee} == {"freq", "mi", "random", "random-inconsistent", "cluster"}
    header = (REPOSITORY / "experiments" / name).read_text().splitlines()[:5]
    assert any(f"make experiment CONFIG=experiments/{name}" in line for line in header)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trainig": {}}, "unknown key 'trainig' in config; did you mean training?"),
        ({"training": {"epoch": 1}}, "unknown key 'epoch' in config: training; did you mean epochs?"),
        ({"training": {"epochs": "two"}}, "training.epochs must be int, not 'two'"),
        ({"tasks": {"SST2": {}}}, "did you mean SST-2?"),
        ({"tasks": {"STS-B": {}}}, "STS-B is a regression task"),
        ({"methods": {"deebert": {}}}, "init_from_full needs methods.full"),
        ({"methods": {"full": {}, "hashee": [{"hash": "frequency"}]}}, "did you mean freq?"),
        ({"methods": {"full": {}, "pabee": {"patiance": [1]}}}, "did you mean patience?"),
        ({"tasks": {"SST-2": {"methods": ["ful"]}}}, "lists 'ful', which methods does not define; did you mean full?"),
    ],
)
def test_invalid_configs_are_rejected(changes, message):
    with pytest.raises(HasheeError) as error:
        parse_config(_config(**changes))
    assert message in str(error.value)


def test_plan_orders_and_wires_the_steps():
    config = parse_config(
        _config(tasks={"SNLI": {"train_file": "{data_dir}/SNLI/dev.tsv", "dev_file": "{data_dir}/SNLI/dev.tsv"}})
    )
    steps = plan_experiment(config)
    names = [step.name for step in steps]
    assert names == [
        "hash hashee-freq-2-4", "finetune full", "finetune hashee-freq-2-4", "finetune deebert",
        "evaluate full", "evaluate hashee-freq-2-4", "evaluate deebert", "report",
    ]
    build = steps[0].argv
    assert build[build.index("--train-file") + 1] == "data/elue/SNLI/dev.tsv"
    assert "--dev-file" not in build  # build-hash reads the training split only
    deebert = steps[3].argv
    assert deebert[deebert.index("--init-from") + 1] == "runs/x/SNLI/full"
    assert steps[3].inputs == [Path("runs/x/SNLI/full")]
    assert deebert[deebert.index("--dev-file") + 1] == "data/elue/SNLI/dev.tsv"
    evaluate = steps[6].argv
    assert evaluate[evaluate.index("--thresholds") + 1] == "0.1,0.2"
    assert "--early-exit" in evaluate
    report = steps[-1].argv
    assert report.count("--reference") == 2  # static and deebert; pabee is not in this config


def test_config_runs_end_to_end_and_resumes(tiny_model_dir, elue_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    output = tmp_path / "results"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(output),
                "model": str(tiny_model_dir("bert")),
                "training": {"epochs": 1, "batch_size": 16, "train_limit": 64, "dev_limit": 32},
                "evaluation": {"limit": 40, "count_limit": 8},
                "tasks": {"SST-2": {}},
                "methods": {"full": {}, "hashee": [{"hash": "freq", "exit_layers": [2, 4]}]},
            }
        )
    )
    result = runner.invoke(app, ["experiment", str(config), "--data-dir", str(elue_dir)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(output / "report" / "SST-2-test.csv")
    assert set(table["series"]) == {"full", "hashee-freq"}
    # Every run was counted, so the cost axis is fvcore's count.
    assert set(table["flops_source"]) == {"counted"}
    assert (output / "report" / "SST-2-test-pareto.svg").is_file()
    assert (output / "experiment.yaml").is_file()

    # A second run reuses every finished step; only the report is written again.
    result = runner.invoke(app, ["experiment", str(config), "--data-dir", str(elue_dir), "--dry-run"])
    assert result.exit_code == 0, result.output
    statuses = [line.split("]")[0].strip("[") for line in result.output.splitlines() if line.startswith("[")]
    assert statuses == ["done"] * 7 + ["to run"]

    # Results of one config are not mixed with another's.
    changed = yaml.safe_load(config.read_text())
    changed["training"]["epochs"] = 2
    config.write_text(yaml.safe_dump(changed))
    result = runner.invoke(app, ["experiment", str(config), "--data-dir", str(elue_dir)])
    assert result.exit_code == 1
    assert "contains results of a different config" in result.output


def test_plan_counts_every_setting_of_the_sweep():
    config = parse_config(_config(evaluation={"count_limit": 50}, methods={"full": {}, "deebert": {"thresholds": [0.1, 0.2]}}))
    steps = {step.name: step for step in plan_experiment(config)}
    count = steps["count deebert"].argv
    assert count[:2] == ["count-flops", "runs/x/SST-2/deebert"]
    assert count[count.index("--thresholds") + 1] == "0.1,0.2"
    assert count[count.index("--limit") + 1] == "50"
    assert "runs/x/SST-2/flops-deebert.csv" in steps["report"].argv
    with pytest.raises(HasheeError, match="count_limit must be at least 1"):
        parse_config(_config(evaluation={"count_limit": 0}))


def test_plan_runs_a_selection():
    config = parse_config(_config(tasks={"SST-2": {}, "MRPC": {}}))
    steps = plan_experiment(config, tasks=["MRPC"], methods=["deebert"])
    # DeeBERT's first stage is the full model, so its steps come along.
    assert [step.name for step in steps] == ["finetune full", "finetune deebert", "evaluate full", "evaluate deebert", "report"]
    assert {step.task for step in steps[:-1]} == {"MRPC"}
    with_pabee = parse_config(_config(methods={"full": {}, "pabee": {}}, report={"references": ["static", "pabee"]}))
    report = plan_experiment(with_pabee, methods=["full"])[-1].argv
    # PABEE was left out of the selection, so the report does not compare against its curve.
    assert report[report.index("--reference") + 1] == "static"
    assert report.count("--reference") == 1
    with pytest.raises(HasheeError) as error:
        plan_experiment(config, methods=["pabe"])
    assert "--method 'pabe' is not in the config" in str(error.value)
