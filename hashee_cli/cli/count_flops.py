"""`hashee count-flops`: count the cost of each example with fvcore and the analytic model, and write a CSV row."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table

from hashee_cli import atomic
from hashee_cli.cli.common import (
    DataDirOption,
    DeviceOption,
    HubConfigOption,
    HubDatasetOption,
    LabelColumnOption,
    ProblemTypeOption,
    SeedOption,
    TestFileOption,
    TextColumnOption,
    TrainFileOption,
    emit_json,
    error_console,
    handle_errors,
    parse_float_list,
    parse_int_list,
    info,
    print_table,
    state,
)
from hashee_cli.counting import CountResult, CountSettings
from hashee_cli.exit_counting import SweepOptions, count_runs
from hashee_cli.modeling.exit_rules import DEFAULT_TOLERANCE
from hashee_cli.errors import HasheeError


def _number(value: float) -> str:
    return f"{value:,.0f}"


def render_summary(row: dict) -> Table:
    unit = row["flops_unit"]
    table = Table(title=f"{row['run']}: {row['task']} {row['split']}, {row['form']} form ({unit} per example)", title_justify="left")
    table.add_column("measure")
    table.add_column("fvcore", justify="right")
    table.add_column("analytic", justify="right")
    table.add_row("mean", _number(row["counted_flops_mean"]), _number(row["analytic_flops_mean"]))
    table.add_row("median", _number(row["counted_flops_median"]), _number(row["analytic_flops_median"]))
    table.add_row("full model (mean)", "", _number(row["full_model_flops_mean"]))
    table.caption = (
        f"{row['num_examples']:,} examples; fvcore vs analytic {row['counted_vs_analytic']:+.2%}; "
        f"{row['counted_ratio_to_full']:.1%} of the full model's cost. "
        + ("MACs: one multiply-add counts once, as in fvcore." if unit == "MACs" else "FLOPs: twice fvcore's MACs.")
    )
    return table


def render_layers(row: dict) -> Table:
    unit = row["flops_unit"]
    table = Table(title=f"Per layer ({unit} per example, mean)", title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("fvcore", justify="right")
    table.add_column("analytic", justify="right")
    for layer in range(1, row["num_layers"] + 1):
        table.add_row(str(layer), _number(row[f"counted_flops_layer_{layer}"]), _number(row[f"analytic_flops_layer_{layer}"]))
    table.add_row("embeddings, heads", _number(row["counted_flops_other"]), _number(row["analytic_flops_other"]))
    return table


def render_generation(row: dict) -> Table:
    unit = row["flops_unit"]
    table = Table(title=f"Greedy generation ({unit}, fvcore, mean per example)", title_justify="left")
    table.add_column("measure")
    table.add_column("fvcore", justify="right")
    table.add_row("encoder (with cross-attention keys and values)", _number(row["counted_encoder_flops_mean"]))
    table.add_row("decoder (with the language-model head)", _number(row["counted_decoder_flops_mean"]))
    table.add_row("decoder per generated token", _number(row["counted_flops_per_generated_token"]))
    table.caption = f"{row['generated_tokens_mean']:.1f} tokens generated per example (at most {row['max_new_tokens']})."
    return table


def render_settings(rows: list[dict]) -> Table:
    """Render one line per static depth or early-exit setting: counted and analytic cost, ratio to the full model."""
    unit = rows[0]["flops_unit"]
    table = Table(title=f"{unit} per example by setting (fvcore: one multiply-add = 1 MAC)", title_justify="left")
    for name in ("run", "setting", "counted", "analytic", "ratio to full"):
        table.add_column(name, justify="left" if name in ("run", "setting") else "right")
    for row in rows:
        setting = row.get("setting") or f"{row['num_layers']} layers"
        table.add_row(
            escape(str(row["run"])), escape(str(setting)), _number(row["counted_flops_mean"]),
            _number(row["analytic_flops_mean"]), f"{row['counted_ratio_to_full']:.3f}",
        )
    return table


def _count_with_progress(settings: CountSettings, options: SweepOptions) -> list[CountResult]:
    progress = Progress(
        TextColumn("[bold]counting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=True,
        disable=state.json,
    )
    task_id = None

    def on_example(done: int) -> None:
        nonlocal task_id
        if task_id is None:
            task_id = progress.add_task("count", total=None)
        progress.update(task_id, completed=done)

    with progress:
        return count_runs(settings, options, on_example)


@handle_errors
def count_flops(
    output: Annotated[Path, typer.Option("--output", "-o", help="FLOPs CSV; the row is appended if it exists.")],
    checkpoint: Annotated[
        Path | None, typer.Argument(help="Checkpoint directory written by `hashee finetune`; omit it to count a backbone.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Backbone to count without a checkpoint (default minilm-l6).")
    ] = None,
    hash_table: Annotated[
        Path | None, typer.Option(help="Hash table for a backbone without a checkpoint; implies --method hashee.")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Without a checkpoint: hashee (with --hash-table), full or multi-exit.")
    ] = None,
    num_layers: Annotated[int | None, typer.Option(help="Without a checkpoint: use only the first k layers.")] = None,
    run: Annotated[
        str | None, typer.Option(help="Run name in the CSV without a checkpoint (default: the hash table's file name, or the method).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task without a checkpoint (default SST-2).")] = None,
    split: Annotated[str, typer.Option(help="Split to count: train, dev or test.")] = "test",
    data_dir: DataDirOption = None,
    train_file: TrainFileOption = None,
    dev_file: Annotated[Path | None, typer.Option(help="Dev file, overriding the one saved in the checkpoint.")] = None,
    test_file: TestFileOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    problem_type: ProblemTypeOption = "classification",
    hub_dataset: HubDatasetOption = None,
    hub_config: HubConfigOption = None,
    max_seq_length: Annotated[
        int | None, typer.Option(help="Maximum tokens per example (default: the checkpoint's setting, or 128).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Count a seeded random subset of this many examples.")] = None,
    seed: SeedOption = 42,
    batch_size: Annotated[int, typer.Option(help="Batch size of the forward pass that finds the exit layers.")] = 64,
    form: Annotated[
        str, typer.Option(help="Forward form: auto (gathered for HashEE, dense for full), gathered, masked or dense.")
    ] = "auto",
    unit: Annotated[str, typer.Option(help="macs (fvcore's unit: one multiply-add is one) or flops (twice as many).")] = "macs",
    exit_rule: Annotated[
        str | None,
        typer.Option(help="Early exit for models with internal classifiers: entropy or patience (default: the method's rule)."),
    ] = None,
    thresholds: Annotated[
        str | None, typer.Option(help="Entropy thresholds to count, as for `hashee evaluate` (default: its sweep).")
    ] = None,
    patience: Annotated[
        str | None, typer.Option(help="Patience values to count, as for `hashee evaluate` (default: 1..L-1).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Patience rule on regression: a change below this counts as unchanged.")
    ] = DEFAULT_TOLERANCE,
    examples: Annotated[Path | None, typer.Option(help="Also write the per-example counts to this TSV file.")] = None,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the CSV instead of appending to it.")] = False,
) -> None:
    """Count FLOPs per example with fvcore on the forward pass that `evaluate` runs, next to the analytic estimate.

    A static curve directory gives one row per depth. A DeeBERT or PABEE
    checkpoint gives one row per threshold or patience value, as `evaluate`
    sweeps them: each example costs the embeddings plus the layers and
    classifiers it runs before it exits.

    Summarisation checkpoints are counted on greedy generation: encoder, decoder and the cost per generated token.
    """
    if examples is not None and examples.exists() and not overwrite:
        raise HasheeError(f"{examples} already exists; choose another --examples path or pass --overwrite")

    data_options = {
        "task": task,
        "data_dir": str(data_dir) if data_dir else None,
        "train_file": str(train_file) if train_file else None,
        "dev_file": str(dev_file) if dev_file else None,
        "test_file": str(test_file) if test_file else None,
        "text_columns": list(text_column) if text_column else None,
        "label_column": label_column,
        "problem_type": problem_type if problem_type != "classification" else None,
        "hub_dataset": hub_dataset,
        "hub_config": hub_config,
        "max_seq_length": max_seq_length,
    }
    settings = CountSettings(
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        model=model,
        method=method,
        hash_table=str(hash_table) if hash_table else None,
        num_layers=num_layers,
        run=run,
        data_options={name: value for name, value in data_options.items() if value is not None},
        split=split,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        form=form,
        unit=unit,
        device=device,
    )
    options = SweepOptions(
        exit_rule, parse_float_list(thresholds, "--thresholds"), parse_int_list(patience, "--patience"), tolerance
    )
    results = _count_with_progress(settings, options)

    rows = pd.DataFrame([result.row for result in results])
    if overwrite or not output.exists():
        atomic.write_csv(output, rows)
    else:
        atomic.append_csv_rows(output, rows)
    if examples is not None:
        atomic.write_csv(examples, pd.concat([result.examples for result in results], ignore_index=True), sep="\t")

    if state.json:
        emit_json(results[0].row if len(results) == 1 else [result.row for result in results])
        return
    if len(results) > 1:
        print_table(render_settings([result.row for result in results]))
    else:
        print_table(render_summary(results[0].row))
        if "counted_flops_per_generated_token" in results[0].row:
            print_table(render_generation(results[0].row))
        else:
            print_table(render_layers(results[0].row))
    uncounted = results[0].row["uncounted_ops"] or "none"
    info(f"Operators left uncounted: {uncounted}")
    info(f"Wrote {len(results)} row(s) to {output}" + (f" and {examples}" if examples else ""))
