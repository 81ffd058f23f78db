"""`hashee learnability-probe` and `hashee build-difficulty-labels`: can instance difficulty be learned?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hashee_cli import atomic
from hashee_cli.cli.common import (
    DataDirOption,
    DevFileOption,
    DeviceOption,
    HubConfigOption,
    HubDatasetOption,
    LabelColumnOption,
    MaxSeqLengthOption,
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
from hashee_cli.errors import HasheeError
from hashee_cli.learnability.experiment import BASELINES, RANDOM, ProbeResult, ProbeSettings, run_probes
from hashee_cli.learnability.labels import LabelSettings
from hashee_cli.learnability.labels import build_difficulty_labels as run_build_labels
from hashee_cli.learnability.probes import PROBES, NeuralSettings
from hashee_cli.training import TrainingConfig


class ProbeProgress:
    """Show one progress bar per training run (probe and seed); the bar is removed when the run ends."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]{task.fields[probe]}[/] seed {task.fields[seed]} epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            console=error_console,
            transient=True,
            disable=state.json,
        )
        self.task_id = None
        self.probe = ""
        self.seed = 0
        self.steps_per_epoch = 0

    def __enter__(self) -> ProbeProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.__exit__(*exc_info)

    def on_probe_start(self, probe: str, seed: int) -> None:
        self.probe, self.seed = probe, seed
        if self.task_id is not None:
            self.progress.remove_task(self.task_id)
            self.task_id = None

    def on_train_start(self, total_steps: int, steps_per_epoch: int, first_step: int = 0) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.task_id = self.progress.add_task(
            "train", total=total_steps, completed=first_step, probe=self.probe, seed=self.seed, epoch=1, epochs=self.epochs, loss=0.0
        )

    def on_step(self, step: int, loss: float, learning_rate: float) -> None:
        epoch = min((step - 1) // max(self.steps_per_epoch, 1) + 1, self.epochs)
        self.progress.update(self.task_id, advance=1, loss=loss, epoch=epoch)

    def on_evaluate_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, record: dict) -> None:
        pass


def _records(frame: pd.DataFrame) -> list[dict]:
    # NaN is not valid JSON, so missing values (one seed's std, a human probe's layer count) become null.
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def render_comparison(result: ProbeResult) -> Table:
    """Build the comparison table: each baseline and probe with its metrics (mean ± std over seeds) and its gap to the random guess."""
    summary = result.summary()
    seeds = int(summary["seeds"].max())
    title = f"{result.kind}-defined difficulty: {result.test_file} ({seeds} seed{'s' if seeds > 1 else ''})"
    table = Table(title=title, title_justify="left")
    table.add_column("probe")
    for name in result.metric_names:
        table.add_column(name, justify="right")
    table.add_column(f"{result.main_metric} - random", justify="right")
    table.add_column("> random + 2 std", justify="center")
    for record in summary.to_dict(orient="records"):
        is_baseline = record["probe"] in BASELINES
        cells = [_mean_std(record[f"{name}_mean"], record[f"{name}_std"]) for name in result.metric_names]
        delta = "" if record["probe"] == RANDOM else f"{record['delta_vs_random']:+.4f}"
        verdict = {True: "[green]yes[/]", False: "no", None: ""}[record["beats_random_by_2_std"]] if not is_baseline else ""
        table.add_row(record["probe"], *cells, delta, verdict, style="dim" if is_baseline else None)
    return table


@handle_errors
def learnability_probe(
    difficulty: Annotated[
        str,
        typer.Option(help="human: one 0/1 label per example (1 = annotators disagreed); model: one 0/1 per layer of a multi-exit model."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV to write: one row per probe or baseline and seed.")],
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with train.txt and test.txt (or .tsv), or the layout with snli_human_difficulty/ and snli_model_difficulty/."),
    ] = None,
    train_file: Annotated[Path | None, typer.Option(help="Training file, instead of the one in --data-dir.")] = None,
    test_file: Annotated[Path | None, typer.Option(help="Test file, instead of the one in --data-dir.")] = None,
    text_column: TextColumnOption = None,
    label_column: Annotated[str, typer.Option(help="Label column of the difficulty files.")] = "label",
    layers: Annotated[
        int | None,
        typer.Option(help="Layer count of the multi-exit model behind model-defined labels; every label vector must have this many entries."),
    ] = None,
    probes: Annotated[str, typer.Option(help=f"Probes to train, comma-separated: {', '.join(PROBES)}.")] = ",".join(PROBES),
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated; every probe and baseline runs once per seed.")] = "42,43,44",
    model: ModelOption = "minilm-l6",
    train_limit: Annotated[int | None, typer.Option(help="Use a seeded random subset of this many training examples per seed.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Score on a random subset of this many test examples (the same for every seed).")] = None,
    dev_fraction: Annotated[float, typer.Option(help="Share of the training examples held out to pick the best epoch.")] = 0.1,
    max_seq_length: MaxSeqLengthOption = 128,
    epochs: Annotated[int, typer.Option(help="Training epochs of the transformer and BiLSTM probes.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size for dev and test predictions.")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of the fine-tuned transformer.")] = 5e-5,
    bilstm_learning_rate: Annotated[float, typer.Option(help="Peak learning rate of the BiLSTM.")] = 1e-3,
    bilstm_hidden_size: Annotated[int, typer.Option(help="Hidden size of each LSTM direction.")] = 128,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output CSV.")] = False,
) -> None:
    """Train probes that predict instance difficulty and compare them with majority and random guesses."""
    if output.exists() and not overwrite:
        raise HasheeError(f"{output} already exists; choose another --output or pass --overwrite")
    seed_list = parse_int_list(seeds, "--seeds") or []
    probe_list = [name.strip() for name in probes.split(",") if name.strip()]
    settings = ProbeSettings(
        difficulty=difficulty,
        data_dir=str(data_dir) if data_dir else None,
        train_file=str(train_file) if train_file else None,
        test_file=str(test_file) if test_file else None,
        text_columns=list(text_column or []),
        label_column=label_column,
        layers=layers,
        probes=probe_list,
        seeds=seed_list,
        train_limit=train_limit,
        test_limit=test_limit,
        dev_fraction=dev_fraction,
        device=device,
        neural=NeuralSettings(
            model=model,
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            learning_rate=learning_rate,
            bilstm_learning_rate=bilstm_learning_rate,
            bilstm_hidden_size=bilstm_hidden_size,
            max_seq_length=max_seq_length,
        ),
    )
    # Check the optimisation settings before any probe trains.
    TrainingConfig(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, learning_rate=min(learning_rate, bilstm_learning_rate))

    info(f"Probing {difficulty}-defined difficulty with {', '.join(probe_list) or 'no probes'} over seeds {', '.join(map(str, seed_list))}")
    with ProbeProgress(epochs) as progress:
        result = run_probes(settings, progress)
    atomic.write_csv(output, result.rows)

    if state.json:
        emit_json(
            {
                "output": str(output),
                "settings": settings.to_dict(),
                "train_positive_rate": result.train_positive_rate,
                "rows": _records(result.rows),
                "summary": _records(result.summary()),
                "summary_line": result.summary_line(),
            }
        )
        return
    print_table(render_comparison(result))
    info(result.summary_line())
    info(f"Wrote {output}")


@handle_errors
def build_difficulty_labels(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder to write train/test label files into.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Use this multi-exit checkpoint (`hashee finetune --method multi-exit`) instead of training one; "
            "its task and data settings apply, and --data-dir or --*-file replace its files."
        ),
    ] = None,
    label_split: Annotated[str, typer.Option(help="Split whose examples get labels: train, dev or test.")] = "dev",
    label_limit: Annotated[int | None, typer.Option(help="Label a seeded random subset of this many examples.")] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of the labelled examples that goes to the probe's test file.")] = 0.2,
    token_level: Annotated[
        bool, typer.Option(help="Read CoNLL-style files (token and tag per line) and label every token.")
    ] = False,
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
    epochs: Annotated[int, typer.Option(help="Training epochs of the multi-exit model; the best epoch on dev is kept.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size for dev evaluation and labelling.")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 5e-5,
    train_limit: Annotated[int | None, typer.Option(help="Train on a seeded random subset of this many examples.")] = None,
    dev_limit: Annotated[int | None, typer.Option(help="Evaluate dev on a seeded random subset of this many examples.")] = None,
    seed: SeedOption = 42,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Fine-tune a multi-exit model and record, for every example (or token), which layers predict it correctly."""
    overrides = {
        name: str(value)
        for name, value in (("data_dir", data_dir), ("train_file", train_file), ("dev_file", dev_file), ("test_file", test_file))
        if value is not None
    }
    settings = LabelSettings(
        output_dir=str(output_dir),
        model=model,
        checkpoint=str(checkpoint) if checkpoint else None,
        label_split=label_split,
        label_limit=label_limit,
        test_fraction=test_fraction,
        train_limit=train_limit,
        dev_limit=dev_limit,
        token_level=token_level,
        device=device,
        overwrite=overwrite,
        data=data_config(
            task, data_dir, train_file, dev_file, test_file, text_column, label_column, problem_type,
            hub_dataset, hub_config, max_seq_length,
        ),
        data_overrides=overrides,
        training=TrainingConfig(
            epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, learning_rate=learning_rate, seed=seed
        ),
    )

    source = f"checkpoint {checkpoint}" if checkpoint else f"a multi-exit {model} trained on {'CoNLL files' if token_level else task}"
    info(f"Building difficulty labels from {source} -> {output_dir}")
    with RichTrainingProgress(epochs) as progress:
        result = run_build_labels(settings, progress)

    if state.json:
        emit_json({**vars(result), "output_dir": str(result.output_dir)})
        return
    table = Table(title=f"Layer accuracy on the labelled {label_split} split", title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("share correct (= share of 1s)", justify="right")
    for layer, accuracy in enumerate(result.layer_accuracy, start=1):
        table.add_row(str(layer), f"{accuracy:.4f}")
    print_table(table)
    if result.num_dropped:
        info(f"{result.num_dropped} sentences had words cut off by --max-seq-length {max_seq_length} and were left out.")
    unit = "sentences (one label vector per token)" if result.level == "token" else "examples"
    info(
        f"Wrote {result.num_train:,} training and {result.num_test:,} test {unit} with {result.num_layers} layer labels "
        f"to {result.output_dir} in {result.seconds:.0f} s."
    )
    if result.level == "sentence":
        info(f"Probe them with `hashee learnability-probe --difficulty model --data-dir {result.output_dir}`.")

