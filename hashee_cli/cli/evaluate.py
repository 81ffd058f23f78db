"""`hashee evaluate`: score a checkpoint on a split and append a row to a metrics CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from hashee_cli import atomic
from hashee_cli.cli.common import (
    DataDirOption,
    DeviceOption,
    SeedOption,
    TestFileOption,
    emit_json,
    handle_errors,
    info,
    print_table,
    state,
)
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import evaluate_checkpoint


def render_row(row: dict) -> Table:
    table = Table(title=f"{row['run']}: {row['task']} {row['split']}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    skip = {"run", "checkpoint"}
    for name, value in row.items():
        # Library versions go to the CSV for provenance; the terminal table keeps to results.
        if name in skip or name.startswith("token_share_layer_") or name.endswith("_version"):
            continue
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    shares = " ".join(
        f"{name.rsplit('_', 1)[1]}:{value:.0%}" for name, value in row.items() if name.startswith("token_share_layer_")
    )
    table.add_row("tokens per exit layer", shares)
    return table


@handle_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory written by `hashee finetune`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Metrics CSV; the row is appended if it exists.")],
    split: Annotated[str, typer.Option(help="Split to evaluate: train, dev or test.")] = "test",
    data_dir: DataDirOption = None,
    test_file: TestFileOption = None,
    dev_file: Annotated[Path | None, typer.Option(help="Dev file, overriding the one saved in the checkpoint.")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Also write per-example predictions to this TSV file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 64,
    form: Annotated[
        str, typer.Option(help="Forward form: auto (gathered for HashEE, dense for full), gathered, masked or dense.")
    ] = "auto",
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded random subset of this many examples.")] = None,
    seed: SeedOption = 42,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the metrics CSV instead of appending to it.")] = False,
) -> None:
    """Evaluate a checkpoint with the gathered HashEE forward and write metrics (and predictions)."""
    if form not in ("auto", "gathered", "masked", "dense"):
        raise HasheeError(f"--form must be auto, gathered, masked or dense, not {form!r}")
    if predictions is not None and predictions.exists() and not overwrite:
        raise HasheeError(f"{predictions} already exists; choose another --predictions path or pass --overwrite")

    overrides = {}
    if data_dir:
        overrides["data_dir"] = str(data_dir)
    if test_file:
        overrides["test_file"] = str(test_file)
    if dev_file:
        overrides["dev_file"] = str(dev_file)

    result = evaluate_checkpoint(
        str(checkpoint), split, overrides, batch_size=batch_size, form=form, device=device, limit=limit, seed=seed
    )

    row = pd.DataFrame([result.row])
    if overwrite or not output.exists():
        atomic.write_csv(output, row)
    else:
        atomic.append_csv_rows(output, row)
    if predictions is not None:
        atomic.write_csv(predictions, result.predictions, sep="\t")

    if state.json:
        emit_json(result.row)
        return
    print_table(render_row(result.row))
    info(f"Wrote {output}" + (f" and {predictions}" if predictions else ""))
