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
from hashee_cli.seq2seq.checkpoint import is_summarization_checkpoint
from hashee_cli.seq2seq.evaluation import evaluate_summarizer


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
    num_beams: Annotated[
        int | None, typer.Option(help="Summarisation: beam width; 1 decodes greedily (the default).")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Summarisation: maximum generated tokens (default: the checkpoint's --max-target-length).")
    ] = None,
    length_penalty: Annotated[
        float | None, typer.Option(help="Summarisation, beam search: divide scores by length to this power (default 1.0).")
    ] = None,
    no_repeat_ngram_size: Annotated[
        int | None, typer.Option(help="Summarisation: forbid repeating n-grams of this size (default 0: allowed).")
    ] = None,
) -> None:
    """Evaluate a checkpoint with the gathered HashEE forward and write metrics (and predictions).

    Summarisation checkpoints generate a summary per document, with the key/value cache, and are scored with ROUGE.
    """
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

    generation_options = {
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "length_penalty": length_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    summarization = is_summarization_checkpoint(checkpoint)
    if summarization:
        result = evaluate_summarizer(
            str(checkpoint), split, overrides, generation_options,
            batch_size=batch_size, form=form, device=device, limit=limit, seed=seed,
        )
    else:
        given = [f"--{name.replace('_', '-')}" for name, value in generation_options.items() if value is not None]
        if given:
            raise HasheeError(f"{', '.join(given)} applies to summarisation checkpoints only; {checkpoint} is a classifier")
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
    if summarization and not result.row["references"]:
        info(f"No ROUGE computed: the {split} split has no summary column; only the summaries were generated.")
    info(f"Wrote {output}" + (f" and {predictions}" if predictions else ""))
