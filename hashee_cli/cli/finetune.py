"""`hashee finetune`: fine-tune a HashEE model or a baseline and save a checkpoint.

Runs unchanged under torchrun, one process per device; only process 0 prints
and writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hashee_cli.cli.common import (
    DataDirOption,
    DevFileOption,
    DeviceOption,
    HubConfigOption,
    HubDatasetOption,
    LabelColumnOption,
    MaxSeqLengthOption,
    MaxTargetLengthOption,
    ModelOption,
    ProblemTypeOption,
    RichTrainingProgress,
    SeedOption,
    TaskOption,
    TestFileOption,
    TextColumnOption,
    TrainFileOption,
    data_config,
    emit_json,
    error_console,
    handle_errors,
    info,
    parse_int_list,
    print_table,
    state,
)
from hashee_cli.devices import resolve_device, resolve_precision
from hashee_cli.distributed import environment_rank
from hashee_cli.errors import HasheeError
from hashee_cli.finetuning import SEVERAL_MODEL_METHODS, FinetuneSettings, finetune as run_finetune
from hashee_cli.training import SilentCallback, StopRequest, TrainingConfig, TrainingInterrupted


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_history(history: list[dict]) -> Table:
    table = Table(title="Epochs (dev split)", title_justify="left")
    # Records of several models (static depths, DeeBERT's stages) may differ in columns; show their union.
    columns = []
    for record in history:
        columns.extend(name for name in record if name not in ("best", "step") and "_layer_" not in name and name not in columns)
    for name in columns:
        table.add_column(name.replace("dev_", ""), justify="right")
    for record in history:
        style = "bold green" if record.get("best") else None
        table.add_row(*[_cell(record.get(name)) for name in columns], style=style)
    return table


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, announce: bool) -> Iterator[None]:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a stop after the current step; a second one aborts at once."""

    def handle(signum: int, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)
        if announce:
            error_console.print(
                f"{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint "
                "(send it again to abort without saving).",
                highlight=False,
            )

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
    except ValueError:
        # Not the main thread (an embedding application): signals stay as they were.
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_command() -> str:
    """Return the command that continues this run: its own arguments plus --resume."""
    program = Path(sys.argv[0]).name
    if program not in ("hashee", "__main__.py"):
        return "the same hashee finetune command with --resume"
    arguments = sys.argv[1:]
    if "--resume" not in arguments:
        arguments = [*arguments, "--resume"]
    launcher = "hashee"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world_size))
        launcher = f"torchrun --nproc_per_node {per_node} --no-python hashee"
    return " ".join([launcher, *map(shlex.quote, arguments)])


def _exit_code(reason: str) -> int:
    # The shell convention for a process ended by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM).
    if reason in signal.Signals.__members__:
        return 128 + signal.Signals[reason].value
    return 1


def _report_interruption(stopped: TrainingInterrupted) -> None:
    command = resume_command()
    if state.json:
        emit_json({"stopped": stopped.reason, "step": stopped.step, "epoch": stopped.epoch,
                   "checkpoint": str(stopped.checkpoint) if stopped.checkpoint else None, "resume_command": command})
        return
    error_console.print(f"Stopped on {stopped.reason} after step {stopped.step} (epoch {stopped.epoch}).", highlight=False)
    if stopped.checkpoint is None:
        error_console.print("No checkpoint was written, so nothing can be resumed.", highlight=False)
        return
    error_console.print(f"Saved {stopped.checkpoint}; no partial output was written. Resume with:", highlight=False)
    error_console.print(f"  {command}", highlight=False, soft_wrap=True)


@handle_errors
def finetune(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Checkpoint directory to write.")],
    hash_table: Annotated[
        Path | None, typer.Option(help="Hash table from `hashee build-hash`; implies --method hashee.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="hashee (token exit by --hash-table), full (the ordinary model), static (the first k layers, "
            "one model per --depths), deebert (internal classifiers trained after the model, backbone frozen), "
            "pabee or multi-exit (a classifier after every layer, trained jointly)."
        ),
    ] = None,
    model: ModelOption = "minilm-l6",
    task: TaskOption = "SST-2",
    data_dir: DataDirOption = None,
    train_file: TrainFileOption = None,
    dev_file: DevFileOption = None,
    test_file: TestFileOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    problem_type: ProblemTypeOption = "classification",
    hub_dataset: HubDatasetOption = None,
    hub_config: HubConfigOption = None,
    max_seq_length: MaxSeqLengthOption = 128,
    max_target_length: MaxTargetLengthOption = 64,
    num_layers: Annotated[int | None, typer.Option(help="Use only the first k layers of the backbone.")] = None,
    depths: Annotated[
        str | None, typer.Option(help="With --method static: the layer counts to train, e.g. 1,2,3 (default: 1..L).")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="With --method deebert: a --method full checkpoint to use as the first stage; only the internal classifiers are trained."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs; the best epoch on dev is kept.")] = 3,
    batch_size: Annotated[
        int, typer.Option(help="Training batch size per optimizer step, summed over all processes under torchrun.")
    ] = 32,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size for dev evaluation, per process.")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 5e-5,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (not applied to biases and LayerNorm).")] = 0.01,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps with linear warm-up; the rest decays linearly to 0.")] = 0.1,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 1.0,
    select_metric: Annotated[
        str | None, typer.Option(help="Dev metric that picks the best epoch (default: the task's main metric).")
    ] = None,
    train_limit: Annotated[int | None, typer.Option(help="Train on a seeded random subset of this many examples.")] = None,
    dev_limit: Annotated[int | None, typer.Option(help="Evaluate dev on a seeded random subset of this many examples.")] = None,
    seed: SeedOption = 42,
    device: DeviceOption = "auto",
    bf16: Annotated[
        bool, typer.Option("--bf16", help="Train with bfloat16 mixed precision (GPUs that support it, and CPUs).")
    ] = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Train with float16 mixed precision and loss scaling (CUDA only).")
    ] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for resumable checkpoints (default: <output-dir>.checkpoints); emptied once the output is written."),
    ] = None,
    save_steps: Annotated[
        int, typer.Option(help="Also checkpoint every N optimizer steps (0: only at the end of each epoch).")
    ] = 0,
    save_total_limit: Annotated[int, typer.Option(help="Keep only the N most recent checkpoints.")] = 2,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its latest checkpoint; pass the original arguments.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output directory; without --resume, also discard old checkpoints.")
    ] = False,
) -> None:
    """Fine-tune a HashEE model or a baseline and write a Hugging Face style checkpoint directory.

    Multi-GPU: torchrun --nproc_per_node N --no-python hashee finetune ... (--batch-size is the global batch).
    """
    if bf16 and fp16:
        raise HasheeError("--bf16 and --fp16 exclude each other; pass one of them")
    precision = "fp32"
    if bf16:
        precision = "bf16"
    elif fp16:
        precision = "fp16"
    is_main = environment_rank() == 0
    resolved_method = method or ("hashee" if hash_table else "full")
    settings = FinetuneSettings(
        output_dir=str(output_dir),
        model=model,
        method=resolved_method,
        hash_table=str(hash_table) if hash_table else None,
        num_layers=num_layers,
        depths=parse_int_list(depths, "--depths"),
        init_from=str(init_from) if init_from else None,
        train_limit=train_limit,
        dev_limit=dev_limit,
        device=device,
        precision=precision,
        overwrite=overwrite,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        resume=resume,
        data=data_config(
            task, data_dir, train_file, dev_file, test_file, text_column, label_column, problem_type,
            hub_dataset, hub_config, max_seq_length, max_target_length,
        ),
        training=TrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            max_grad_norm=max_grad_norm,
            seed=seed,
            select_metric=select_metric,
        ),
    )

    summarization = settings.data.task_spec().problem_type == "summarization"
    if is_main:
        info(f"Fine-tuning {model} ({resolved_method}) on {task} -> {output_dir}")
        note = resolve_precision(settings.precision, resolve_device(device)).note
        if note:
            info(f"Note: {note}.")
        if resolved_method in SEVERAL_MODEL_METHODS:
            info(f"No resumable checkpoints: --method {resolved_method} trains several models in turn.")
        elif not summarization:
            every = f"every {save_steps} steps and " if save_steps else ""
            info(f"Checkpoints: {settings.checkpoint_path} ({every}each epoch; keeping the last {save_total_limit})")

    stop = StopRequest()
    try:
        # Summarisation keeps no resumable checkpoints, so Ctrl-C stops it at once instead of after a step.
        handling = contextlib.nullcontext() if summarization else stop_on_signals(stop, announce=is_main and not state.json)
        with handling:
            if is_main:
                with RichTrainingProgress(epochs) as progress:
                    outcome = run_finetune(settings, progress, stop)
            else:
                outcome = run_finetune(settings, SilentCallback(), stop)
    except TrainingInterrupted as stopped:
        if is_main:
            _report_interruption(stopped)
        raise typer.Exit(_exit_code(stopped.reason))

    if not is_main:
        return
    history = outcome.result.history
    if state.json:
        payload = {"output_dir": str(outcome.output_dir), "best_epoch": outcome.result.best_epoch, "history": history}
        if outcome.members:
            payload["members"] = outcome.members
        emit_json(payload)
        return
    print_table(render_history(history))
    if outcome.num_truncated:
        info(f"{outcome.num_truncated} examples were longer than --max-seq-length {max_seq_length} and were truncated.")
    processes = f" in {outcome.processes} processes" if outcome.processes > 1 else ""
    if outcome.members:
        depths_text = ", ".join(f"{member['depth']} ({member['best_dev_score']:.4f})" for member in outcome.members)
        info(
            f"Static curve: depths with their best dev {outcome.result.select_metric}: {depths_text}; "
            f"trained on {outcome.num_train:,} examples{processes} in {outcome.seconds:.0f} s. Wrote {outcome.output_dir}"
        )
        return
    info(
        f"Best epoch {outcome.result.best_epoch} (dev {outcome.result.select_metric} {outcome.result.best_score:.4f}); "
        f"trained on {outcome.num_train:,} examples{processes} in {outcome.seconds:.0f} s. Wrote {outcome.output_dir}"
    )
