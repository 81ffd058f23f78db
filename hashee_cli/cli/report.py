"""`hashee report`: turn metrics CSVs into comparison tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from hashee_cli import atomic
from hashee_cli.cli.common import emit_json, handle_errors, info, print_table, state
from hashee_cli.report import attach_flop_counts, comparison_table, is_flop_count_csv, read_flop_counts, read_metrics, to_markdown


def render(table: pd.DataFrame) -> Table:
    rich_table = Table(title="Comparison", title_justify="left")
    for column in table.columns:
        rich_table.add_column(column, justify="right" if pd.api.types.is_numeric_dtype(table[column]) else "left")
    for row in table.itertuples(index=False):
        rich_table.add_row(*["" if pd.isna(value) else f"{value:.4f}" if isinstance(value, float) else str(value) for value in row])
    return rich_table


@handle_errors
def report(
    metrics: Annotated[
        list[Path],
        typer.Argument(help="Metrics CSVs written by `hashee evaluate`, and FLOPs CSVs written by `hashee count-flops`."),
    ],
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Write comparison.csv and comparison.md here.")
    ] = None,
) -> None:
    """Compare runs: scores, difference to the full model, mean exit layer and measured speed."""
    counts = [path for path in metrics if is_flop_count_csv(path)]
    metrics_rows = read_metrics([path for path in metrics if path not in counts])
    table = comparison_table(attach_flop_counts(metrics_rows, read_flop_counts(counts)))
    if output_dir is not None:
        atomic.write_csv(output_dir / "comparison.csv", table)
        atomic.write_text(output_dir / "comparison.md", to_markdown(table))
    if state.json:
        emit_json(table.to_dict(orient="records"))
        return
    print_table(render(table))
    if output_dir is not None:
        info(f"Wrote {output_dir / 'comparison.csv'} and {output_dir / 'comparison.md'}")
