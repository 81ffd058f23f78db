"""Checkpoints, resume and faults of `hashee finetune`, in process with a tiny model on real SST-2 text.

Faults are injected where they happen for real: a SIGTERM sent to this
process, a write that fails with ENOSPC half-way through a file, a loss that
turns NaN, bytes flipped in a checkpoint file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hashee_cli import atomic, training
from hashee_cli.cli import app
from hashee_cli.data.encoding import shard_batch, training_batches
from hashee_cli.modeling.model import HashEEModel

runner = CliRunner()

# 96 examples in batches of 16: 6 steps per epoch, 12 in all, a checkpoint every 2 steps.
STEPS_PER_EPOCH = 6
TOTAL_STEPS = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on a machine whose cores are busy make each tiny step many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_arguments(tiny_model_dir, elue_dir) -> list[str]:
    return [
        "--model", str(tiny_model_dir("bert")), "--method", "full", "--data-dir", str(elue_dir),
        "--train-limit", "96", "--dev-limit", "32", "--epochs", "2", "--batch-size", "16",
        "--learning-rate", "1e-3", "--save-steps", "2",
    ]  # fmt: skip


def finetune(arguments: list[str], output: Path, *extra: str):
    return runner.invoke(app, ["finetune", *arguments, "-o", str(output), *extra])


def error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines, "expected an error message"
    return lines[-1]


def checkpoint_names(output: Path) -> list[str]:
    folder = output.with_name(output.name + ".checkpoints")
    return sorted(entry.name for entry in folder.iterdir()) if folder.exists() else []


def epoch_metrics(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "epoch_metrics.csv").drop(columns=["seconds"])


def assert_same_run(output: Path, reference: Path) -> None:
    assert (output / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(epoch_metrics(output), epoch_metrics(reference))


def inject_at_step(monkeypatch, step: int, action) -> None:
    """Call ``action(output)`` on the training forward pass of ``step``; it may replace the output."""
    original = HashEEModel.forward

    def forward(self, *args, salt: int = 0, **kwargs):
        output = original(self, *args, salt=salt, **kwargs)
        if self.training and salt == step:
            output = action(output) or output
        return output

    monkeypatch.setattr(HashEEModel, "forward", forward)


def send_sigterm(output) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def uninterrupted(run_arguments, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = finetune(run_arguments, output)
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="module")
def interrupted(run_arguments, tmp_path_factory) -> Path:
    """Return the output path of a run stopped by SIGTERM during step 9 (epoch 2); its checkpoints sit beside it."""
    output = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        inject_at_step(monkeypatch, 9, send_sigterm)
        result = finetune(run_arguments, output)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    return output


@pytest.fixture
def interrupted_copy(interrupted, tmp_path) -> Path:
    output = tmp_path / "run"
    shutil.copytree(interrupted.with_name("run.checkpoints"), tmp_path / "run.checkpoints")
    return output


def test_shard_batch_partitions_global_batch():
    lengths = [5, 9, 3, 12, 7, 7, 2, 11, 4, 8, 6]
    for batch in training_batches(lengths, 4, torch.Generator().manual_seed(0)):
        shards = [shard_batch(batch, rank, 3) for rank in range(3)]
        assert sorted(index for shard in shards for index in shard) == sorted(batch)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # Striding a length-sorted batch gives process 0 the longest example and no process only the short tail.
        assert shards[0][0] == batch[0]


def test_sigterm_saves_checkpoint_and_resume_command(interrupted):
    assert not interrupted.exists()
    # Steps 2, 4 and 8 (--save-steps 2), 6 (the end of epoch 1) and 9 (the stop); only the last 2 are kept.
    assert checkpoint_names(interrupted) == ["step-0000008", "step-0000009"]
    state = json.loads((interrupted.with_name("run.checkpoints") / "step-0000009" / "trainer_state.json").read_text())
    assert state["loop"]["step"] == 9
    assert state["loop"]["epoch"] == 2
    assert state["loop"]["batches_done"] == 3
    assert state["loop"]["best_epoch"] == 1
    assert state["seed"] == 42
    assert "torch" in state["versions"]
    assert set(state["files"]) >= {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt"}


def test_stop_message_names_checkpoint(run_arguments, tmp_path, monkeypatch):
    inject_at_step(monkeypatch, 2, send_sigterm)
    result = finetune(run_arguments, tmp_path / "run")
    assert result.exit_code == 128 + signal.SIGTERM
    assert "Stopped on SIGTERM after step 2 (epoch 1)" in result.output
    assert "run.checkpoints/step-0000002" in result.output
    assert "--resume" in result.output
    assert not (tmp_path / "run").exists()


def test_resume_matches_uninterrupted(interrupted_copy, uninterrupted, run_arguments):
    result = finetune(run_arguments, interrupted_copy, "--resume")
    assert result.exit_code == 0, result.output
    assert "Resuming after step 9 (epoch 2)" in result.output
    assert_same_run(interrupted_copy, uninterrupted)
    settings = json.loads((interrupted_copy / "hashee_config.json").read_text())
    assert settings["resumed_from_step"] == 9
    assert settings["seed"] == 42
    # The finished output makes the checkpoints redundant, so the folder is gone.
    assert not interrupted_copy.with_name("run.checkpoints").exists()


def test_resume_restores_best_epoch_weights(run_arguments, tmp_path, monkeypatch):
    # No later epoch counts as an improvement, so epoch 1 stays the best and a resume in epoch 2
    # must take its weights from the checkpoint.
    monkeypatch.setattr(training, "_improves", lambda score, best: False)
    reference = tmp_path / "reference"
    assert finetune(run_arguments, reference).exit_code == 0

    output = tmp_path / "run"
    with monkeypatch.context() as signals:
        inject_at_step(signals, 9, send_sigterm)
        assert finetune(run_arguments, output).exit_code == 128 + signal.SIGTERM
    result = finetune(run_arguments, output, "--resume")
    assert result.exit_code == 0, result.output
    assert list(epoch_metrics(output)["best"]) == [True, False]
    assert_same_run(output, reference)


def test_resume_rejects_changed_arguments(interrupted_copy, run_arguments):
    changed = [argument if argument != "1e-3" else "2e-3" for argument in run_arguments]
    result = finetune(changed, interrupted_copy, "--resume", "--batch-size", "8")
    assert result.exit_code == 1
    message = error_line(result)
    assert "cannot resume" in message
    assert "--learning-rate was 0.001, now 0.002" in message
    assert "--batch-size was 16, now 8" in message
    assert checkpoint_names(interrupted_copy) == ["step-0000008", "step-0000009"]


def test_resume_without_checkpoint(run_arguments, tmp_path):
    result = finetune(run_arguments, tmp_path / "run", "--resume")
    assert result.exit_code == 1
    assert "no checkpoint in" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_leftover_checkpoints_need_resume_or_overwrite(interrupted_copy, run_arguments):
    result = finetune(run_arguments, interrupted_copy)
    assert result.exit_code == 1
    assert "contains checkpoints of an unfinished run (latest step-0000009)" in error_line(result)
    assert checkpoint_names(interrupted_copy) == ["step-0000008", "step-0000009"]

    result = finetune(run_arguments, interrupted_copy, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "Resuming" not in result.output
    assert checkpoint_names(interrupted_copy) == []


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garble(path: Path) -> None:
    path.write_text("{not json")


@pytest.mark.parametrize(
    ("file_name", "damage", "problem"),
    [
        ("model.safetensors", _flip_byte, "is corrupted"),
        ("optimizer.pt", _truncate, "is corrupted"),
        ("trainer_state.json", _garble, "is unreadable"),
    ],
)
def test_corrupted_checkpoint_file(interrupted_copy, run_arguments, file_name, damage, problem):
    folder = interrupted_copy.with_name("run.checkpoints")
    damage(folder / "step-0000009" / file_name)
    result = finetune(run_arguments, interrupted_copy, "--resume")
    assert result.exit_code == 1
    message = error_line(result)
    assert f"step-0000009/{file_name} {problem}" in message
    assert "to resume from step-0000008" in message
    assert checkpoint_names(interrupted_copy) == ["step-0000008", "step-0000009"]
    assert not interrupted_copy.exists()

    # Following the advice resumes from the earlier checkpoint.
    shutil.rmtree(folder / "step-0000009")
    result = finetune(run_arguments, interrupted_copy, "--resume")
    assert result.exit_code == 0, result.output
    assert "Resuming after step 8 (epoch 2)" in result.output


def test_disk_full_during_checkpoint(run_arguments, uninterrupted, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        # Each checkpoint saves optimizer, scheduler and RNG state; call 4 is step 4's optimizer.
        calls.append(f)
        if len(calls) == 4:
            Path(f).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    output = tmp_path / "run"
    result = finetune(run_arguments, output)
    assert result.exit_code == 1
    message = error_line(result)
    assert "cannot write checkpoint" in message
    assert "step-0000004: No space left on device" in message
    assert "step-0000002 is the last complete checkpoint" in message
    # The half-written checkpoint left nothing behind, and the earlier one is whole.
    assert checkpoint_names(output) == ["step-0000002"]
    assert not output.exists()

    monkeypatch.setattr(torch, "save", real_save)
    result = finetune(run_arguments, output, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_run(output, uninterrupted)


def test_disk_full_during_final_save(run_arguments, uninterrupted, tmp_path, monkeypatch):
    def write_csv(path, frame, sep=","):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    real_write_csv = atomic.write_csv
    monkeypatch.setattr(atomic, "write_csv", write_csv)
    output = tmp_path / "run"
    result = finetune(run_arguments, output)
    assert result.exit_code == 1
    message = error_line(result)
    assert f"cannot write {output}: No space left on device" in message
    assert f"step-{TOTAL_STEPS:07d}" in message
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["run.checkpoints"]

    # Resuming a finished run only writes the output.
    monkeypatch.setattr(atomic, "write_csv", real_write_csv)
    result = finetune(run_arguments, output, "--resume")
    assert result.exit_code == 0, result.output
    assert f"Resuming after step {TOTAL_STEPS} (epoch 2)" in result.output
    assert_same_run(output, uninterrupted)


def test_nan_loss_stops_and_keeps_last_checkpoint(run_arguments, uninterrupted, tmp_path, monkeypatch):
    def poison(output):
        output.loss = output.loss * float("nan")

    inject_at_step(monkeypatch, 5, poison)
    output = tmp_path / "run"
    result = finetune(run_arguments, output)
    assert result.exit_code == 1
    message = error_line(result)
    assert "the training loss became nan at step 5 (epoch 1)" in message
    assert "step-0000004, is kept" in message
    assert checkpoint_names(output) == ["step-0000002", "step-0000004"]
    assert not output.exists()

    # The fault was in one step only, so resuming from the kept checkpoint ends as if it never happened.
    monkeypatch.undo()
    result = finetune(run_arguments, output, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_run(output, uninterrupted)


def test_fp16_on_cpu_is_a_noted_no_op(run_arguments, tmp_path):
    result = finetune(run_arguments, tmp_path / "run", "--fp16", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "--fp16 needs a CUDA device; on CPU only --bf16 is supported" in result.output
    assert json.loads((tmp_path / "run" / "hashee_config.json").read_text())["precision"] == "fp32"


def test_bf16_runs_on_cpu(run_arguments, uninterrupted, tmp_path):
    result = finetune(run_arguments, tmp_path / "run", "--bf16")
    assert result.exit_code == 0, result.output
    assert "Note:" not in result.output
    assert json.loads((tmp_path / "run" / "hashee_config.json").read_text())["precision"] == "bf16"
    # bfloat16 arithmetic changes the trajectory, so the weights must differ from the float32 run's.
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != (uninterrupted / "model.safetensors").read_bytes()


def test_bf16_and_fp16_exclude_each_other(run_arguments, tmp_path):
    result = finetune(run_arguments, tmp_path / "run", "--bf16", "--fp16")
    assert result.exit_code == 1
    assert "--bf16 and --fp16 exclude each other" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_metrics_row_records_seeds_and_versions(uninterrupted, tmp_path):
    metrics = tmp_path / "metrics.csv"
    result = runner.invoke(app, ["evaluate", str(uninterrupted), "--limit", "40", "--seed", "7", "-o", str(metrics)])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(metrics).iloc[0]
    assert row["seed"] == 7
    assert row["train_seed"] == 42
    assert row["torch_version"] == torch.__version__
    assert row["hashee_version"]
