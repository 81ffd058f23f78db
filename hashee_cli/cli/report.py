"""`hashee report`: turn metrics CSVs into comparison tables, Pareto plots and ELUE scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from hashee_cli.cli.common import emit_json, format_cell, handle_errors, info, print_table, state
from hashee_cli.comparison import build_report, write_report
from hashee_cli.elue import DEFAULT_REFERENCE


# Columns of the per-task CSV and markdown tables that the terminal leaves out, to stay readable
# in 120 columns: the run names and measured throughput stay in the files.
TERMINAL_HIDDEN = ("flops_source", "examples_per_second", "tokens_per_second", "speedup_vs_full", "run")
TERMINAL_HEADERS = {
    "delta_vs_full": "vs full (points)",
    "flops_per_example": "MACs per example",
    "flops_ratio_to_full": "ratio to full",
    "mean_elue": "mean ELUE",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "mean_exit_layer_encoder": "exit layer (encoder)",
    "mean_exit_layer_decoder": "exit layer (decoder)",
    "macs_per_generated_token": "MACs per generated token",
    "best_elue": "best ELUE",
}


def _compact(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}"


def _cell(column: str, value) -> str:
    if pd.isna(value):
        return ""
    if column in ("flops_per_example", "macs_per_generated_token"):
        return _compact(float(value))
    if column in ("delta_vs_full", "mean_elue", "best_elue") or column.startswith("elue_vs_"):
        return f"{value:+.2f}"
    if column == "flops_ratio_to_full":
        return f"{value:.3f}"
    return escape(format_cell(value))


def render(table: pd.DataFrame, title: str = "Comparison", main_metrics: list[str] | None = None) -> Table:
    """Render a report table for the terminal, with short headers and compact costs."""
    columns = [column for column in table.columns if column not in TERMINAL_HIDDEN]
    rich_table = Table(title=escape(title), title_justify="left")
    for column in columns:
        header = TERMINAL_HEADERS.get(column) or column.replace("elue_vs_", "ELUE vs ").replace("_", " ")
        numeric = pd.api.types.is_numeric_dtype(table[column])
        rich_table.add_column(header, justify="right" if numeric else "left", no_wrap=column == "setting")
    for row in table[columns].itertuples(index=False):
        rich_table.add_row(*[_cell(column, value) for column, value in zip(columns, row)])
    caption = []
    if main_metrics:
        caption.append(f"score is {', '.join(main_metrics)}")
    if "flops_source" in table.columns and table["flops_source"].notna().any():
        caption.append(f"cost: {', '.join(sorted(set(table['flops_source'].dropna().astype(str))))} MACs (one multiply-add is one MAC)")
    if caption:
        rich_table.caption = "; ".join(caption)
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
        print_table(render(group.table, group.title, group.main_metrics))
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
