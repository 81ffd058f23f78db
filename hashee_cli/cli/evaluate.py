"""`hashee evaluate`: score a checkpoint on a split and append rows to a metrics CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from hashee_cli import atomic
from hashee_cli.checkpoint import check_checkpoint_files as checkpoint_settings
from hashee_cli.cli.common import (
    DataDirOption,
    DeviceOption,
    SeedOption,
    TestFileOption,
    emit_json,
    format_cell,
    handle_errors,
    info,
    parse_float_list,
    parse_int_list,
    print_table,
    state,
)
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import evaluate_checkpoint
from hashee_cli.exit_sweep import METHOD_RULES, evaluate_sweep
from hashee_cli.finetuning import curve_member_run, static_curve_members
from hashee_cli.modeling.exit_rules import DEFAULT_TOLERANCE
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
        table.add_row(name, format_cell(value))
    shares = " ".join(
        f"{name.rsplit('_', 1)[1]}:{value:.0%}" for name, value in row.items() if name.startswith("token_share_layer_")
    )
    if shares:
        table.add_row("tokens per exit layer", shares)
    return table


def render_sweep(rows: list[dict]) -> Table:
    first = rows[0]
    table = Table(title=f"{first['run']}: {first['task']} {first['split']}, {first['exit_rule']} rule", title_justify="left")
    columns = ["setting", "score", "exited_early_share", "mean_example_exit_layer", "macs_per_example", "examples_per_second"]
    if first["exit_mode"] == "online":
        columns.append("replay_agreement")
    for name in columns:
        table.add_column(name, justify="left" if name == "setting" else "right")
    for row in rows:
        table.add_row(*[format_cell(row[name]) for name in columns])
    table.caption = f"score is {first['main_metric']}; MACs are multiply-accumulates per example"
    return table


def _write_outputs(rows: list[dict], output: Path, overwrite: bool, predictions: Path | None, frame: pd.DataFrame | None) -> None:
    table = pd.DataFrame(rows)
    if overwrite or not output.exists():
        atomic.write_csv(output, table)
    else:
        atomic.append_csv_rows(output, table)
    if predictions is not None and frame is not None:
        atomic.write_csv(predictions, frame, sep="\t")


@handle_errors
def evaluate(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint directory written by `hashee finetune` (or a static curve directory).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Metrics CSV; rows are appended if it exists.")],
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
    exit_rule: Annotated[
        str | None,
        typer.Option(
            help="Early exit for models with internal classifiers: entropy (DeeBERT) or patience (PABEE). "
            "Default: the rule of the checkpoint's method."
        ),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(help="Entropy thresholds to sweep, in nats within [0, ln C], e.g. 0.05,0.1,0.2 (default: 0 to ln C in 15 steps)."),
    ] = None,
    patience: Annotated[
        str | None, typer.Option(help="Patience values to sweep, whole numbers in 1..L-1 (default: all of them).")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Patience rule on regression: a change below this counts as unchanged.")
    ] = DEFAULT_TOLERANCE,
    early_exit: Annotated[
        bool,
        typer.Option(
            "--early-exit/--replay-only",
            help="Also run the real per-example early-exit forward for every setting: measures examples per second "
            "and checks its predictions against the replay of the recorded layers.",
        ),
    ] = False,
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
    """Evaluate a checkpoint and write metrics rows (and predictions).

    HashEE models run the gathered forward. DeeBERT and PABEE checkpoints
    sweep their exit rule: every layer is recorded once and each threshold or
    patience value is replayed, one row per setting. A static curve directory
    gives one row per depth. Summarisation checkpoints generate a summary per
    document, with the key/value cache, and are scored with ROUGE.
    """
    if form not in ("auto", "gathered", "masked", "dense"):
        raise HasheeError(f"--form must be auto, gathered, masked or dense, not {form!r}")
    if predictions is not None and predictions.exists() and not overwrite:
        raise HasheeError(f"{predictions} already exists; choose another --predictions path or pass --overwrite")
    if output.is_dir():
        raise HasheeError(f"--output {output} is a directory; give a CSV file name such as {output / 'metrics.csv'}")

    overrides = {}
    if data_dir:
        overrides["data_dir"] = str(data_dir)
    if test_file:
        overrides["test_file"] = str(test_file)
    if dev_file:
        overrides["dev_file"] = str(dev_file)
    common = dict(batch_size=batch_size, device=device, limit=limit, seed=seed)
    sweep_options = exit_rule or thresholds or patience or early_exit

    generation_options = {
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "length_penalty": length_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }
    members = static_curve_members(checkpoint)
    if members is None and is_summarization_checkpoint(checkpoint):
        if sweep_options:
            raise HasheeError(f"{checkpoint} is a summarisation checkpoint; exit-rule options apply to deebert and pabee checkpoints")
        result = evaluate_summarizer(str(checkpoint), split, overrides, generation_options, form=form, **common)
        _write_outputs([result.row], output, overwrite, predictions, result.predictions)
        if state.json:
            emit_json(result.row)
            return
        print_table(render_row(result.row))
        if not result.row["references"]:
            info(f"No ROUGE computed: the {split} split has no summary column; only the summaries were generated.")
        info(f"Wrote {output}" + (f" and {predictions}" if predictions else ""))
        return
    given = [f"--{name.replace('_', '-')}" for name, value in generation_options.items() if value is not None]
    if given:
        raise HasheeError(f"{', '.join(given)} applies to summarisation checkpoints only; {checkpoint} is a classifier")

    if members is not None:
        if sweep_options:
            raise HasheeError(f"{checkpoint} is a static curve; exit-rule options apply to deebert and pabee checkpoints")
        results = [evaluate_checkpoint(str(member), split, overrides, form=form, **common) for member in members]
        for result in results:
            result.row["run"] = curve_member_run(checkpoint, result.row["run"])
        _write_outputs([result.row for result in results], output, overwrite, None, None)
        if predictions is not None:
            info("--predictions is not written for a static curve; evaluate one depth's checkpoint to get them.")
        if state.json:
            emit_json([result.row for result in results])
            return
        for result in results:
            print_table(render_row(result.row))
        info(f"Wrote {len(results)} rows to {output}")
        return

    settings = checkpoint_settings(checkpoint)
    if sweep_options or settings.get("method") in METHOD_RULES:
        sweep = evaluate_sweep(
            str(checkpoint), split, overrides, exit_rule=exit_rule,
            thresholds=parse_float_list(thresholds, "--thresholds"), patience=parse_int_list(patience, "--patience"),
            tolerance=tolerance, online=early_exit, **common,
        )
        _write_outputs(sweep.rows, output, overwrite, predictions, sweep.predictions)
        if state.json:
            emit_json({"rows": sweep.rows, "exits_nothing": sweep.exits_nothing})
            return
        print_table(render_sweep(sweep.rows))
        if sweep.exits_nothing:
            info(f"No example exited early at: {', '.join(sweep.exits_nothing)} (every example ran all layers).")
        info(
            f"Recorded every layer in one pass ({sweep.record_seconds:.1f} s) and replayed {len(sweep.rows)} settings. "
            f"Wrote {output}" + (f" and {predictions}" if predictions else "")
        )
        return

    result = evaluate_checkpoint(str(checkpoint), split, overrides, form=form, **common)
    _write_outputs([result.row], output, overwrite, predictions, result.predictions)
    if state.json:
        emit_json(result.row)
        return
    print_table(render_row(result.row))
    info(f"Wrote {output}" + (f" and {predictions}" if predictions else ""))
