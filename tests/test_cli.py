"""The command line end to end: artifacts, CSV contents and bad input, with tiny models and real data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from transformers import AutoModelForSequenceClassification

from conftest import error_line, invoke, write_tsv

SMALL = ["--train-limit", "96", "--dev-limit", "48", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def freq_table_path(tiny_bert, elue_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "freq.json"
    result = invoke("build-hash", "--model", tiny_bert, "--data-dir", elue_dir, "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def hashee_checkpoint(tiny_bert, elue_dir, freq_table_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "hashee"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--hash-table", freq_table_path, "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    return output


def test_build_hash_prints_summary(freq_table_path, tiny_bert, elue_dir, tmp_path):
    result = invoke("build-hash", "--model", tiny_bert, "--data-dir", elue_dir, "--exit-layers", "2,4", "-o", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    assert "share of tokens" in result.output
    assert "mean exit layer" in result.output
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["exit_layers"] == [2, 4]
    assert table["data"]["split"] == "train"
    assert table["tokenizer"]["vocab_size"] == 30522
    assert len(table["tokenizer"]["fingerprint"]) == 64


def test_build_hash_refuses_to_overwrite(freq_table_path, tiny_bert, elue_dir):
    before = freq_table_path.read_bytes()
    result = invoke("build-hash", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "random", "-o", freq_table_path)
    assert result.exit_code == 1
    assert "already exists" in error_line(result)
    assert freq_table_path.read_bytes() == before


def test_build_hash_exit_layer_out_of_range(tiny_bert, elue_dir, tmp_path):
    result = invoke("build-hash", "--model", tiny_bert, "--data-dir", elue_dir, "--exit-layers", "1,5", "-o", tmp_path / "t.json")
    assert result.exit_code == 1
    assert "exit layer 5 is outside 1..4" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_build_hash_unknown_method(tiny_bert, elue_dir, tmp_path):
    result = invoke("build-hash", "--model", tiny_bert, "--data-dir", elue_dir, "--method", "frequency", "-o", tmp_path / "t.json")
    assert result.exit_code == 1
    assert "did you mean freq" in error_line(result)


def test_finetune_writes_complete_checkpoint(hashee_checkpoint, tiny_bert):
    names = {path.name for path in hashee_checkpoint.iterdir()}
    for expected in ("config.json", "model.safetensors", "tokenizer.json", "hashee_config.json", "hash_table.json", "epoch_metrics.csv"):
        assert expected in names
    settings = json.loads((hashee_checkpoint / "hashee_config.json").read_text())
    assert settings["method"] == "hashee"
    assert settings["training"]["batch_size"] == 16
    assert settings["train_limit"] == 96
    assert settings["task"]["name"] == "SST-2"
    assert "torch" in settings["versions"]
    epochs = pd.read_csv(hashee_checkpoint / "epoch_metrics.csv")
    assert list(epochs["epoch"]) == [1]
    assert "dev_accuracy" in epochs
    # The weights load in plain transformers.
    model = AutoModelForSequenceClassification.from_pretrained(hashee_checkpoint)
    assert model.config.num_labels == 2
    # No temporary folders are left beside the checkpoint.
    assert [path.name for path in hashee_checkpoint.parent.iterdir()] == ["hashee"]


def test_finetune_is_deterministic(tiny_bert, elue_dir, freq_table_path, tmp_path):
    import torch

    outputs = []
    for offset, name in enumerate(("a", "b")):
        # A different global RNG state before each run, as in two separate processes.
        torch.manual_seed(1000 + offset)
        result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--hash-table", freq_table_path, "-o", tmp_path / name, *SMALL)
        assert result.exit_code == 0, result.output
        outputs.append(pd.read_csv(tmp_path / name / "epoch_metrics.csv").drop(columns=["seconds"]))
    pd.testing.assert_frame_equal(outputs[0], outputs[1])


def test_evaluate_writes_metrics_row(hashee_checkpoint, tmp_path):
    metrics = tmp_path / "metrics.csv"
    predictions = tmp_path / "predictions.tsv"
    result = invoke("evaluate", hashee_checkpoint, "--split", "test", "-o", metrics, "--predictions", predictions, "--limit", "200")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(metrics).iloc[0]
    assert row["task"] == "SST-2"
    assert row["method"] == "hashee"
    assert row["split"] == "test"
    assert row["num_examples"] == 200
    assert 0.0 <= row["accuracy"] <= 1.0
    assert 1.0 <= row["mean_exit_layer"] < 4.0
    shares = [row[f"token_share_layer_{layer}"] for layer in range(1, 5)]
    assert sum(shares) == pytest.approx(1.0)
    assert row["examples_per_second"] > 0
    assert row["flops_unit"] == "MACs"
    assert row["macs_per_example"] > 0
    written = pd.read_csv(predictions, sep="\t")
    assert len(written) == 200
    assert set(written["prediction"]) <= {0, 1}

    # A second evaluation appends a row.
    result = invoke("evaluate", hashee_checkpoint, "--split", "dev", "-o", metrics, "--limit", "50")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(metrics)["split"]) == ["test", "dev"]


def test_evaluate_masked_and_gathered_agree(hashee_checkpoint, tmp_path):
    rows = []
    for form in ("masked", "gathered"):
        result = invoke("evaluate", hashee_checkpoint, "--form", form, "-o", tmp_path / f"{form}.csv", "--limit", "300")
        assert result.exit_code == 0, result.output
        rows.append(pd.read_csv(tmp_path / f"{form}.csv").iloc[0])
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    assert rows[0]["mean_exit_layer"] == pytest.approx(rows[1]["mean_exit_layer"])


def test_mrpc_reports_accuracy_and_f1(tiny_bert, elue_dir, tmp_path):
    output = tmp_path / "mrpc"
    result = invoke("finetune", "--model", tiny_bert, "--task", "MRPC", "--data-dir", elue_dir, "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", output, "-o", tmp_path / "m.csv", "--limit", "100")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "m.csv").iloc[0]
    assert {"accuracy", "f1"} <= set(row.index)
    assert row["main_metric"] == "f1"


def test_stsb_regression_reports_correlations(tiny_bert, elue_dir, tmp_path):
    output = tmp_path / "stsb"
    result = invoke("finetune", "--model", tiny_bert, "--task", "STS-B", "--data-dir", elue_dir, "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", output, "-o", tmp_path / "m.csv", "--limit", "100", "--predictions", tmp_path / "p.tsv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "m.csv").iloc[0]
    assert {"pearson", "spearman"} <= set(row.index)
    assert pd.read_csv(tmp_path / "p.tsv", sep="\t")["prediction"].dtype == float


def test_multi_exit_checkpoint_round_trip(tiny_bert, elue_dir, tmp_path):
    from hashee_cli.checkpoint import load_checkpoint
    from hashee_cli.modeling.multi_exit import MultiExitModel

    output = tmp_path / "multi"
    result = invoke("finetune", "--model", tiny_bert, "--method", "multi-exit", "--data-dir", elue_dir, "-o", output, *SMALL)
    assert result.exit_code == 0, result.output
    assert (output / "exit_heads.safetensors").is_file()
    checkpoint = load_checkpoint(output)
    assert isinstance(checkpoint.model, MultiExitModel)
    assert len(checkpoint.model.exit_heads) == 3
    result = invoke("evaluate", output, "-o", tmp_path / "m.csv", "--limit", "50")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "m.csv").iloc[0]["method"] == "multi-exit"

    (output / "exit_heads.safetensors").unlink()
    result = invoke("evaluate", output, "-o", tmp_path / "again.csv")
    assert result.exit_code == 1
    assert "exit_heads.safetensors missing" in error_line(result)


def test_num_layers_mismatch_with_table(tiny_bert, elue_dir, freq_table_path, tmp_path):
    output = tmp_path / "run"
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "--hash-table", freq_table_path, "--num-layers", "2", "-o", output, *SMALL)
    assert result.exit_code == 1
    assert "built for 4 layers but the model uses 2" in error_line(result)
    assert not output.exists()


def test_table_for_other_tokenizer(tiny_bert, elue_dir, tmp_path):
    table = tmp_path / "minilm.json"
    assert invoke("build-hash", "--data-dir", elue_dir, "-o", table).exit_code == 0
    other = tmp_path / "other-model"
    shutil.copytree(tiny_bert, other)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["brand-new-token"])
    tokenizer.save_pretrained(other)
    result = invoke("finetune", "--model", other, "--data-dir", elue_dir, "--hash-table", table, "-o", tmp_path / "run", *SMALL)
    assert result.exit_code == 1
    assert "built for another tokenizer" in error_line(result)
    assert not (tmp_path / "run").exists()


def test_incomplete_checkpoint(hashee_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(hashee_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    result = invoke("evaluate", broken, "-o", tmp_path / "m.csv")
    assert result.exit_code == 1
    assert "incomplete: model.safetensors missing" in error_line(result)
    assert not (tmp_path / "m.csv").exists()


def test_unknown_model_without_network(elue_dir, tmp_path):
    result = invoke("finetune", "--model", "no-such-org/no-such-model", "--data-dir", elue_dir, "-o", tmp_path / "run", *SMALL)
    assert result.exit_code == 1
    assert "could not be loaded from the Hugging Face Hub" in error_line(result)
    assert not (tmp_path / "run").exists()


def test_missing_data_file(tiny_bert, tmp_path):
    result = invoke("finetune", "--model", tiny_bert, "--train-file", tmp_path / "nope.tsv", "--dev-file", tmp_path / "nope.tsv", "-o", tmp_path / "run")
    assert result.exit_code == 1
    assert "nope.tsv does not exist" in error_line(result)
    assert not (tmp_path / "run").exists()


def test_evaluate_label_outside_model_labels(hashee_checkpoint, tmp_path):
    test_file = write_tsv(tmp_path / "test.tsv", ["sentence", "label"], [["fine", "1"], ["odd", "7"]])
    result = invoke("evaluate", hashee_checkpoint, "--test-file", test_file, "-o", tmp_path / "m.csv")
    assert result.exit_code == 1
    assert "line 3: label '7'" in error_line(result)
    assert not (tmp_path / "m.csv").exists()


def test_existing_output_dir_is_kept(tiny_bert, elue_dir, tmp_path):
    output = tmp_path / "mine"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    result = invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "-o", output, *SMALL)
    assert result.exit_code == 1
    assert "already exists" in error_line(result)
    assert (output / "notes.txt").read_text() == "keep me"


def test_report_compares_runs(hashee_checkpoint, tiny_bert, elue_dir, tmp_path):
    full = tmp_path / "full"
    assert invoke("finetune", "--model", tiny_bert, "--data-dir", elue_dir, "-o", full, *SMALL).exit_code == 0
    metrics = tmp_path / "metrics.csv"
    for checkpoint in (full, hashee_checkpoint):
        assert invoke("evaluate", checkpoint, "-o", metrics, "--limit", "100").exit_code == 0
    result = invoke("report", metrics, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "report" / "comparison.csv")
    assert list(table["method"]) == ["full", "hashee"]
    assert table.loc[0, "delta_vs_full"] == 0
    assert table.loc[0, "macs_ratio_to_full"] == 1.0
    assert table.loc[1, "macs_ratio_to_full"] < 1.0
    assert "| task |" in (tmp_path / "report" / "comparison.md").read_text()


def test_installed_command_runs(tmp_path, elue_dir):
    executable = shutil.which("hashee") or f"{sys.executable} -m hashee_cli"
    completed = subprocess.run(
        [*executable.split(), "build-hash", "--data-dir", str(elue_dir), "--num-buckets", "3", "-o", str(tmp_path / "h.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "h.json").read_text())["exit_layers"] == [2, 4, 6]

    completed = subprocess.run([*executable.split(), "evaluate", str(tmp_path / "missing"), "-o", str(tmp_path / "m.csv")], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert completed.stderr.strip().count("\n") == 0
    assert "does not exist" in completed.stderr
