"""`hashee build-hash`: count the training split and write a hash table file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hashee_cli.cli.common import (
    DataDirOption,
    HubConfigOption,
    HubDatasetOption,
    LabelColumnOption,
    MaxSeqLengthOption,
    MaxTargetLengthOption,
    ModelOption,
    ProblemTypeOption,
    SeedOption,
    TaskOption,
    TextColumnOption,
    TrainFileOption,
    data_config,
    emit_json,
    handle_errors,
    info,
    parse_int_list,
    print_table,
    state,
)
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.build import HashSettings, build_hash_table
from hashee_cli.hashing.builders import HASH_METHODS
from hashee_cli.hashing.table import HashTable


def render_summary(table: HashTable, output: Path) -> Table:
    stats = table.stats
    summary = Table(
        title=f"{table.method} hash over {stats.get('num_tokens', 0):,} training tokens -> {output}",
        title_justify="left",
    )
    summary.add_column("exit layer", justify="right")
    summary.add_column("buckets", justify="right")
    summary.add_column("share of tokens", justify="right")
    summary.add_column("share of types", justify="right")
    summary.add_column("frequent types")
    for layer in range(1, table.num_layers + 1):
        key = str(layer)
        buckets = sum(1 for exit_layer in table.exit_layers if exit_layer == layer)
        type_share = stats.get("type_share", {}).get(key)
        summary.add_row(
            key,
            str(buckets),
            f"{stats['token_share'][key]:.1%}",
            "-" if type_share is None else f"{type_share:.1%}",
            " ".join(stats.get("frequent_types", {}).get(key, [])),
        )
    summary.caption = (
        f"mean exit layer {stats['mean_exit_layer']:.2f} of {table.num_layers} "
        "(special tokens included; they exit at the last layer)"
    )
    return summary


@handle_errors
def build_hash(
    output: Annotated[Path, typer.Option("--output", "-o", help="Hash table file to write (JSON).")],
    method: Annotated[str, typer.Option(help=f"Hash function: {', '.join(HASH_METHODS)}.")] = "freq",
    model: ModelOption = "minilm-l6",
    task: TaskOption = "SST-2",
    data_dir: DataDirOption = None,
    train_file: TrainFileOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    problem_type: ProblemTypeOption = "classification",
    hub_dataset: HubDatasetOption = None,
    hub_config: HubConfigOption = None,
    max_seq_length: MaxSeqLengthOption = 128,
    max_target_length: MaxTargetLengthOption = 64,
    num_layers: Annotated[
        int | None, typer.Option(help="Use only the first k layers of the backbone (default: all).")
    ] = None,
    num_buckets: Annotated[
        int | None, typer.Option(help="Number of buckets, spread evenly over the layers (default: one per layer).")
    ] = None,
    exit_layers: Annotated[
        str | None,
        typer.Option(help="Exit layer of each bucket, earliest bucket first, e.g. 2,4,6. Replaces --num-buckets."),
    ] = None,
    default_exit_layer: Annotated[
        int | None, typer.Option(help="Exit layer of tokens not seen in training (default: the last layer).")
    ] = None,
    order: Annotated[
        str, typer.Option(help="descending: the highest-ranked types (most frequent, highest MI) exit earliest; or ascending.")
    ] = "descending",
    mi_bins: Annotated[int, typer.Option(help="Quantile bins for regression targets with --method mi.")] = 5,
    seed: SeedOption = 42,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Build a hash table that maps each token to its exit layer, counting the training split only."""
    if output.exists() and not overwrite:
        raise HasheeError(f"{output} already exists; choose another --output or pass --overwrite")
    if output.is_dir():
        raise HasheeError(f"--output {output} is a directory; give a file name such as {output / 'hash.json'}")

    data = data_config(
        task, data_dir, train_file, None, None, text_column, label_column, problem_type, hub_dataset, hub_config, max_seq_length,
        max_target_length,
    )
    settings = HashSettings(
        method=method,
        num_layers=num_layers,
        num_buckets=num_buckets,
        exit_layers=parse_int_list(exit_layers, "--exit-layers"),
        default_exit_layer=default_exit_layer,
        seed=seed,
        order=order,
        mi_bins=mi_bins,
    )
    table = build_hash_table(model, data, settings)
    table.save(output)

    if state.json:
        emit_json({"output": str(output), "method": table.method, "exit_layers": table.exit_layers, "stats": table.stats})
        return
    print_table(render_summary(table, output))
    info(f"Wrote {output}")
