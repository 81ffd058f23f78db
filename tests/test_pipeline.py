"""The README's pipeline with the packaged MiniLM on real SST-2 text, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def hashee(*args) -> subprocess.CompletedProcess:
    executable = shutil.which("hashee")
    command = [executable] if executable else [sys.executable, "-m", "hashee_cli"]
    completed = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr
    return completed


def test_minilm_hashee_pipeline(elue_dir, tmp_path):
    train = ["--data-dir", elue_dir, "--train-limit", "1000", "--dev-limit", "200", "--epochs", "1", "--learning-rate", "2e-4"]
    hashee("build-hash", "--method", "freq", "--data-dir", elue_dir, "--exit-layers", "4,5,6", "-o", tmp_path / "hash.json")
    hashee("finetune", "--hash-table", tmp_path / "hash.json", *train, "-o", tmp_path / "hashee")
    hashee("finetune", "--method", "full", *train, "-o", tmp_path / "full")
    for run in ("full", "hashee"):
        hashee("evaluate", tmp_path / run, "--split", "test", "--limit", "600", "-o", tmp_path / "metrics.csv")

    metrics = pd.read_csv(tmp_path / "metrics.csv").set_index("method")
    # 1,000 training sentences already lift the pretrained MiniLM well above chance (50%). One epoch on so
    # few examples varies with the seed that initialises the new head: 65-75% test accuracy for the full
    # model over seeds 1, 7 and 42 (2 CPU cores), so the bound leaves room below that spread.
    assert metrics.loc["full", "accuracy"] > 0.6
    assert metrics.loc["hashee", "accuracy"] > 0.6
    assert metrics.loc["full", "mean_exit_layer"] == 6.0
    assert 4.0 <= metrics.loc["hashee", "mean_exit_layer"] < 5.0

    completed = hashee("report", tmp_path / "metrics.csv")
    assert "hashee" in completed.stdout
