"""`hashee report`: turn metrics CSVs into comparison tables, Pareto plots and ELUE scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from hashee_cli.cli.common import emit_json, handle_errors, info, print_table, state
from hashee_cli.comparison import build_report, write_report
from hashee_cli.elue import DEFAULT_REFERENCE


def _cell(value) -> str:
    if pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return escape(str(value))


def render(table: pd.DataFrame, title: str = "Comparison") -> Table:
    rich_table = Table(title=escape(title), title_justify="left")
    for column in table.columns:
        rich_table.add_column(column, justify="right" if pd.api.types.is_numeric_dtype(table[column]) else "left")
    for row in table.itertuples(index=False):
        rich_table.add_row(*[_cell(value) for value in row])
    return rich_table


@handle_errors
def report(
    metrics: Annotated[
        list[Path],
        typer.Argument(help="Metrics CSVs written by `hashee evaluate`, and FLOPs CSVs written by `hashee count-flops`."),
    ],
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o",
            help="Write comparison.csv/.md, one table (CSV, markdown) and one Pareto plot (PNG, SVG) per task, "
            "elue_summary.csv and report.md here.",
        ),
    ] = None,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="Curve to compute ELUE scores against: static (default; the first k layers, with the full model), "
            "deebert, pabee, hashee-<hash>. Repeat for several.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace report files that already exist in --output-dir.")] = False,
) -> None:
    """Compare runs: score, cost, ratio to the full model, measured speed-up and ELUE score, per task.

    FLOPs CSVs of `hashee count-flops` join the metrics rows of the same run. When every run of a task
    has one, the counted cost replaces the analytic estimate on the cost axis.
    """
    built = build_report(metrics, reference or [DEFAULT_REFERENCE])
    files = write_report(built, output_dir, overwrite) if output_dir is not None else []

    if state.json:
        emit_json(
            {
                "groups": [
                    {"task": group.task, "split": group.split, "model": group.model, "rows": group.table.to_dict(orient="records")}
                    for group in built.groups
                ],
                "elue_summary": built.summary.to_dict(orient="records"),
                "notes": built.notes,
                "skipped": [{"item": item.item, "reason": item.reason} for item in built.skipped],
                "files": [str(path) for path in files],
            }
        )
        return
    for group in built.groups:
        print_table(render(group.table, group.title))
    if not built.summary.empty:
        print_table(render(built.summary, "ELUE scores by curve (points)"))
    for note in built.notes:
        info(escape(f"Note: {note}"))
    if built.skipped:
        info(f"Skipped {len(built.skipped)} item(s):")
        for item in built.skipped:
            info(escape(f"  - {item.item}: {item.reason}"))
    if files:
        info(f"Wrote {len(files)} files to {output_dir} (overview: {output_dir / 'report.md'})")
