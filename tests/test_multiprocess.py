"""Real runs in subprocesses on real SST-2 text: two processes under torchrun (gloo) against one, and runs
killed mid-epoch with SIGTERM or SIGKILL that --resume brings to the same end as an uninterrupted run.

Every subprocess starts in its own process group, which the test kills on the way out, so no run outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel

from conftest import tiny_config
from hashee_cli.checkpoint import load_checkpoint
from hashee_cli.data.encoding import encode_split
from hashee_cli.data.reading import DataConfig, load_split
from hashee_cli.evaluation import predict

HASHEE = [sys.executable, "-m", "hashee_cli"]
# --standalone lets torchrun pick a free port on the loopback address, so parallel test runs do not collide.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hashee_cli"]
TIMEOUT = 300


def environment() -> dict[str, str]:
    # One thread per process: two processes of two threads each would oversubscribe a 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextlib.contextmanager
def started(command: list, log: Path) -> Iterator[subprocess.Popen]:
    """Start ``command`` in a new process group, its output in ``log``; kill what is left of the group on exit."""
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [str(part) for part in command], stdout=handle, stderr=subprocess.STDOUT, env=environment(), start_new_session=True
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def run(command: list, log: Path) -> str:
    with started(command, log) as process:
        returncode = process.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert returncode == 0, output
    return output


def dev_logits(checkpoint_dir: Path, elue_dir: Path) -> np.ndarray:
    checkpoint = load_checkpoint(checkpoint_dir)
    split = load_split(DataConfig(task="SST-2", data_dir=str(elue_dir)), checkpoint.task, "dev")
    encoded = encode_split(split, checkpoint.task, checkpoint.tokenizer, 128)
    return predict(checkpoint.model, encoded, 128, checkpoint.tokenizer.pad_token_id).logits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # This process only evaluates; two OpenMP threads on busy cores would make that many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_without_dropout(tmp_path_factory, minilm_tokenizer) -> Path:
    # Dropout draws differ between one and two processes; without it the two runs compute the same function.
    directory = tmp_path_factory.mktemp("tiny-no-dropout")
    config = tiny_config("bert", len(minilm_tokenizer), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = AutoModel.from_config(config)
    model.save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return directory


def test_two_processes_match_one_process(tiny_without_dropout, elue_dir, tmp_path):
    # 197 = 12 x 16 + 5: the last global batch splits 3 + 2, which only correct loss weighting gets right.
    arguments = [
        "finetune", "--model", tiny_without_dropout, "--method", "full", "--data-dir", elue_dir,
        "--train-limit", "197", "--dev-limit", "64", "--epochs", "1", "--batch-size", "16", "--learning-rate", "1e-3",
    ]  # fmt: skip
    run([*HASHEE, *arguments, "-o", tmp_path / "single"], tmp_path / "single.log")
    output = run([*TORCHRUN, *arguments, "-o", tmp_path / "double"], tmp_path / "double.log")

    # Only process 0 reports progress and results, and only it writes files.
    assert output.count("epoch 1: train loss") == 1, output
    assert output.count("Wrote ") == 1, output
    assert "in 2 processes" in output
    assert sorted(entry.name for entry in tmp_path.iterdir() if entry.is_dir()) == ["double", "single"]
    single = json.loads((tmp_path / "single" / "hashee_config.json").read_text())
    double = json.loads((tmp_path / "double" / "hashee_config.json").read_text())
    assert (single["processes"], double["processes"]) == (1, 2)
    assert double["seed"] == 42
    assert "torch" in double["versions"]

    # The reduced training loss and the dev metrics (computed on 32 + 32 examples, then gathered) agree.
    single_epochs = pd.read_csv(tmp_path / "single" / "epoch_metrics.csv")
    double_epochs = pd.read_csv(tmp_path / "double" / "epoch_metrics.csv")
    assert double_epochs["train_loss"].iloc[0] == pytest.approx(single_epochs["train_loss"].iloc[0], rel=1e-6)
    assert double_epochs["dev_accuracy"].iloc[0] == single_epochs["dev_accuracy"].iloc[0]

    # The two runs sum the same gradients in a different order, so float32 rounding (about 1e-7 relative)
    # separates them: measured at about 1e-6 on these logits. Weighting the last, uneven batch as if its
    # halves were equal already moves them by about 1e-3, so a bound of 2e-5 separates the two cases.
    difference = np.abs(dev_logits(tmp_path / "single", elue_dir) - dev_logits(tmp_path / "double", elue_dir)).max()
    assert difference < 2e-5


# 160 examples in batches of 8: 20 steps per epoch, 40 in all, a checkpoint every 5 steps.
STEPS_PER_EPOCH = 20


@pytest.fixture(scope="module")
def kill_arguments(tiny_model_dir, elue_dir) -> list:
    return [
        "finetune", "--model", tiny_model_dir("bert"), "--method", "full", "--data-dir", elue_dir,
        "--train-limit", "160", "--dev-limit", "32", "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-3",
        "--save-steps", "5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(kill_arguments, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    run([*HASHEE, *kill_arguments, "-o", folder / "run"], folder / "run.log")
    return folder / "run"


def checkpoint_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(match.group(1)) for entry in folder.iterdir() if (match := re.fullmatch(r"step-(\d+)", entry.name)))


def wait_for_checkpoint_after(folder: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not any(found > step for found in checkpoint_steps(folder)):
        assert process.poll() is None, f"the run ended before writing a checkpoint after step {step}"
        assert time.monotonic() < deadline, f"no checkpoint after step {step} within {TIMEOUT} s"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_same_result(signum, kill_arguments, uninterrupted, tmp_path):
    output = tmp_path / "run"
    checkpoints = tmp_path / "run.checkpoints"
    with started([*HASHEE, *kill_arguments, "-o", output], tmp_path / "killed.log") as process:
        # The first step checkpoint of epoch 2 has appeared: the run is in the middle of epoch 2.
        wait_for_checkpoint_after(checkpoints, STEPS_PER_EPOCH, process)
        process.send_signal(signum)
        returncode = process.wait(timeout=TIMEOUT)
    log = (tmp_path / "killed.log").read_text()

    latest = checkpoint_steps(checkpoints)[-1]
    assert STEPS_PER_EPOCH < latest < 2 * STEPS_PER_EPOCH, f"not stopped mid-epoch: latest checkpoint step {latest}"
    assert not output.exists()
    if signum == signal.SIGTERM:
        assert returncode == 128 + signal.SIGTERM, log
        assert f"Stopped on SIGTERM after step {latest} (epoch 2)" in log
        assert "--resume" in log
    else:
        assert returncode == -signal.SIGKILL

    log = run([*HASHEE, *kill_arguments, "-o", output, "--resume"], tmp_path / "resumed.log")
    assert f"Resuming after step {latest} (epoch 2)" in log
    assert (output / "model.safetensors").read_bytes() == (uninterrupted / "model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_csv(output / "epoch_metrics.csv").drop(columns=["seconds"]),
        pd.read_csv(uninterrupted / "epoch_metrics.csv").drop(columns=["seconds"]),
    )
    # Checkpoints and any half-written one a SIGKILL left are gone once the output is complete.
    assert not checkpoints.exists()
