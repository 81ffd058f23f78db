"""What every command shares: the console, option aliases, error handling and progress display."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from hashee_cli.data.reading import DataConfig
from hashee_cli.errors import HasheeError

def _console(stderr: bool = False) -> Console:
    # Piped output (CI logs, files) gets a wide console so that tables are not
    # squeezed to the 80 columns that rich assumes without a terminal.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


console = _console()
error_console = _console(stderr=True)


class State:
    """Global flags set by the app callback."""

    debug: bool = False
    json: bool = False


state = State()


def fail(message: str, code: int = 1) -> None:
    # Under torchrun every process reports its errors, so the rank prefix identifies the process.
    rank = os.environ.get("RANK", "0")
    # The backslash keeps rich from reading "[rank 1]" as a markup tag.
    where = f"\\[rank {rank}] " if rank not in ("", "0") else ""
    error_console.print(f"{where}[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(command: Callable) -> Callable:
    """Turn known errors into one-line messages and a non-zero exit; a traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HasheeError as error:
            if state.debug:
                raise
            fail(str(error))
        except KeyboardInterrupt:
            error_console.print("Interrupted; no partial output was written.")
            raise typer.Exit(130)
        except MemoryError:
            if state.debug:
                raise
            fail("out of memory; lower --batch-size or --max-seq-length")

    return wrapper


def emit_json(payload: Any) -> None:
    """Print a machine-readable result on stdout (the --json mode)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(table: Table) -> None:
    if not state.json:
        console.print(table)


def format_cell(value: Any) -> str:
    """Format a metrics value for a terminal table: large counts with thousands separators, scores to 4 decimals."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4f}"
    return str(value)


def info(message: str) -> None:
    if not state.json:
        console.print(message, highlight=False)


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """Parse "1,2,3" or "1 2 3" into integers, naming the option on a bad value."""
    if text is None or not text.strip():
        return None
    values = []
    for part in text.replace(",", " ").split():
        try:
            values.append(int(part))
        except ValueError:
            raise HasheeError(f"{option} takes whole numbers separated by commas, not {part!r}") from None
    return values


def parse_float_list(text: str | None, option: str) -> list[float] | None:
    """Parse "0.1,0.2" or "0.1 0.2" into numbers, naming the option on a bad value."""
    if text is None or not text.strip():
        return None
    values = []
    for part in text.replace(",", " ").split():
        try:
            values.append(float(part))
        except ValueError:
            raise HasheeError(f"{option} takes numbers separated by commas, not {part!r}") from None
    return values


# Option aliases shared by the commands.
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Backbone: an alias (minilm-l6, offline), a local Hugging Face model directory, or a hub name.",
    ),
]
TaskOption = Annotated[
    str,
    typer.Option(
        help="Task: SST-2, MRPC, STS-B, SNLI, SciTail, IMDb, DialogSum, summarization, or a name for your own files."
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help="Folder in the ELUE layout: <data-dir>/<TASK>/{train,dev,test_full}.tsv.")
]
TrainFileOption = Annotated[Path | None, typer.Option(help="Training file (.tsv, .csv, .jsonl or .parquet).")]
DevFileOption = Annotated[Path | None, typer.Option(help="Development file, used to pick the best epoch.")]
TestFileOption = Annotated[Path | None, typer.Option(help="Test file.")]
TextColumnOption = Annotated[
    list[str] | None,
    typer.Option("--text-column", help="Text column of your own files; give it twice for sentence pairs."),
]
LabelColumnOption = Annotated[str | None, typer.Option(help="Label column of your own files.")]
ProblemTypeOption = Annotated[
    str, typer.Option(help="For your own files: classification, regression or summarization.")
]
HubDatasetOption = Annotated[
    str | None, typer.Option(help="Hugging Face datasets name to load splits from (needs network access).")
]
HubConfigOption = Annotated[str | None, typer.Option(help="Configuration name of the hub data set.")]
MaxSeqLengthOption = Annotated[int, typer.Option(help="Maximum tokens per example; longer ones are truncated.")]
MaxTargetLengthOption = Annotated[
    int, typer.Option(help="Summarisation: maximum tokens of a target summary; longer ones are truncated.")
]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
DeviceOption = Annotated[str, typer.Option(help="Device: auto (CUDA when available), cpu, cuda or cuda:N.")]


def data_config(
    task: str,
    data_dir: Path | None,
    train_file: Path | None,
    dev_file: Path | None,
    test_file: Path | None,
    text_column: list[str] | None,
    label_column: str | None,
    problem_type: str,
    hub_dataset: str | None,
    hub_config: str | None,
    max_seq_length: int,
    max_target_length: int = 64,
) -> DataConfig:
    return DataConfig(
        task=task,
        data_dir=str(data_dir) if data_dir else None,
        train_file=str(train_file) if train_file else None,
        dev_file=str(dev_file) if dev_file else None,
        test_file=str(test_file) if test_file else None,
        hub_dataset=hub_dataset,
        hub_config=hub_config,
        text_columns=list(text_column or []),
        label_column=label_column,
        problem_type=problem_type,
        max_seq_length=max_seq_length,
        max_target_length=max_target_length,
    )


class RichTrainingProgress:
    """Render training progress with a rich progress bar (epoch, step, loss) and one line per epoch."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=error_console,
            transient=True,
            disable=state.json,
        )
        self.task_id = None
        self.steps_per_epoch = 0
        self.epoch = 1

    def __enter__(self) -> RichTrainingProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.__exit__(*exc_info)

    def on_train_start(self, total_steps: int, steps_per_epoch: int, first_step: int = 0) -> None:
        self.steps_per_epoch = steps_per_epoch
        # A resumed run starts part-way: at the epoch and batch after the checkpoint's step.
        self.epoch = min(first_step // steps_per_epoch + 1, self.epochs)
        done = first_step - (self.epoch - 1) * steps_per_epoch
        if first_step and not state.json:
            self.progress.console.print(f"Resuming after step {first_step} (epoch {self.epoch})", highlight=False)
        if self.task_id is not None:
            # Methods that train several models (static curves, DeeBERT's stages) reuse one bar.
            self.progress.reset(
                self.task_id, total=steps_per_epoch, completed=done, epoch=self.epoch, epochs=self.epochs, loss=0.0,
                description="train",
            )
            return
        self.task_id = self.progress.add_task(
            "train", total=steps_per_epoch, completed=done, epoch=self.epoch, epochs=self.epochs, loss=0.0
        )

    def on_stage(self, stage: str) -> None:
        if not state.json:
            self.progress.console.print(f"[bold]{stage}[/]", highlight=False)

    def on_step(self, step: int, loss: float, learning_rate: float) -> None:
        self.progress.update(self.task_id, advance=1, loss=loss)

    def on_evaluate_start(self, epoch: int) -> None:
        self.progress.update(self.task_id, description="dev")

    def on_epoch_end(self, record: dict) -> None:
        # Per-layer scores of multi-exit models stay in epoch_metrics.csv; the line shows the summary.
        metrics = "  ".join(
            f"{name[4:]} {value:.4f}"
            for name, value in record.items()
            if name.startswith("dev_") and "_layer_" not in name and isinstance(value, float)
        )
        marker = "  [green](best so far)[/]" if record.get("best") else ""
        if not state.json:
            self.progress.console.print(
                f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}  {metrics}  "
                f"({record['seconds']:.0f} s){marker}",
                highlight=False,
            )
        self.epoch = record["epoch"] + 1
        if self.epoch <= self.epochs:
            # reset() replaces every field, so all of them are passed again.
            self.progress.reset(
                self.task_id, total=self.steps_per_epoch, epoch=self.epoch, epochs=self.epochs, loss=0.0
            )
