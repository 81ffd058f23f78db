"""Assemble the comparison report: a table and a Pareto plot per task, ELUE scores, and what was skipped.

Inputs are metrics CSVs (``hashee_cli.report.collect_metrics``). Every
task, split and backbone forms a group with its own table and plot. The
combined table goes to ``comparison.csv`` and ``comparison.md``, and an
overview with every group, note and skipped item goes to ``report.md``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hashee_cli import atomic
from hashee_cli.elue import DEFAULT_REFERENCE, add_elue_scores, elue_summary
from hashee_cli.errors import HasheeError
from hashee_cli.flops import UNIT, UNIT_NOTE
from hashee_cli.plots import figure_bytes, pareto_figure
from hashee_cli.report import GROUP_COLUMNS, METRIC_COLUMNS, OPTIONAL_COLUMNS, Skipped, collect_metrics, comparison_table, group_notes, to_markdown

# Columns of the per-task tables, in order; ELUE columns follow.
TASK_COLUMNS = (
    "series", "setting", "score", "delta_vs_full", "flops_per_example", "flops_ratio_to_full", "flops_source",
    "examples_per_second", "speedup_vs_full", "run",
)
SERIES_ORDER = ("static", "full")


@dataclass
class GroupReport:
    """One task, split and backbone: its table and the files written for it."""

    task: str
    split: str
    model: str
    slug: str
    table: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    main_metrics: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.task} ({self.split})" + (f", {self.model}" if self.model else "")


@dataclass
class ComparisonReport:
    """The whole report: the combined table, the groups, the ELUE summary, notes and skipped items."""

    table: pd.DataFrame
    groups: list[GroupReport]
    summary: pd.DataFrame
    references: list[str]
    notes: list[str]
    skipped: list[Skipped]
    files: list[Path] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "task"


def _check_references(table: pd.DataFrame, references: list[str]) -> None:
    known = sorted(set(table["series"]) | {"static"})
    for reference in references:
        if reference in known:
            continue
        close = difflib.get_close_matches(reference, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise HasheeError(f"unknown --reference {reference!r}; {hint}curves in these CSVs: {', '.join(known)}")


def _order_rows(group: pd.DataFrame) -> pd.DataFrame:
    rank = group["series"].map(lambda name: SERIES_ORDER.index(name) if name in SERIES_ORDER else len(SERIES_ORDER))
    return group.assign(_rank=rank).sort_values(["_rank", "series", "flops_per_example"], kind="stable").drop(columns="_rank")


def build_report(paths: list[Path], references: list[str] | None = None) -> ComparisonReport:
    """Read the CSVs and compute every table; nothing is written."""
    references = list(dict.fromkeys(references or [DEFAULT_REFERENCE]))
    metrics, skipped = collect_metrics(paths)
    table = comparison_table(metrics)
    _check_references(table, references)
    notes = group_notes(table)
    table, elue_skipped = add_elue_scores(table, references)
    skipped.extend(elue_skipped)

    for index, row in table[table["flops_per_example"].isna()].iterrows():
        skipped.append(Skipped(f"{row['task']}: {row['run']}", "has no FLOPs figure (macs_per_example or a count); it is left out of the plot"))

    keys = list(table.groupby(list(GROUP_COLUMNS), sort=False).groups)
    task_splits = [(task, split) for task, split, _ in keys]
    groups = []
    for task, split, model in keys:
        group = table[(table["task"] == task) & (table["split"] == split) & (table["model"] == model)]
        slug = f"{_slug(task)}-{_slug(split)}"
        if task_splits.count((task, split)) > 1:
            slug += f"-{_slug(Path(model).name if model else 'model')}"
        # Metrics beside the main one (MRPC's accuracy, ROUGE-1/2/L) and the measures only some tasks have.
        extra = [
            name for name in (*METRIC_COLUMNS, *OPTIONAL_COLUMNS)
            if name in group and group[name].notna().any() and not (group["main_metric"] == name).all()
        ]
        columns = [*TASK_COLUMNS[:3], *extra, *TASK_COLUMNS[3:], *(f"elue_vs_{reference}" for reference in references)]
        report = GroupReport(task, split, model, slug, _order_rows(group)[columns].reset_index(drop=True))
        report.main_metrics = sorted(set(group["main_metric"].dropna().astype(str)))
        groups.append(report)
    return ComparisonReport(table, groups, elue_summary(table, references), references, notes, skipped)


def render_files(report: ComparisonReport, output_dir: Path) -> dict[Path, str | bytes]:
    """Return the content of every report file by path; tables are text, plots PNG and SVG bytes."""
    files: dict[Path, str | bytes] = {
        output_dir / "comparison.csv": report.table.to_csv(index=False),
        output_dir / "comparison.md": to_markdown(report.table),
        output_dir / "elue_summary.csv": report.summary.to_csv(index=False),
    }
    for group in report.groups:
        stem = output_dir / group.slug
        files[stem.with_suffix(".csv")] = group.table.to_csv(index=False)
        files[stem.with_suffix(".md")] = to_markdown(group.table)
        rows = report.table[
            (report.table["task"] == group.task) & (report.table["split"] == group.split) & (report.table["model"] == group.model)
        ]
        figure = pareto_figure(rows, group.title, report.references[0])
        for suffix in ("png", "svg"):
            files[output_dir / f"{group.slug}-pareto.{suffix}"] = figure_bytes(figure, suffix)
        group.files = [path for path in files if path.name.startswith(f"{group.slug}.") or path.name.startswith(f"{group.slug}-pareto.")]
    files[output_dir / "report.md"] = overview_markdown(report)
    return files


def write_report(report: ComparisonReport, output_dir: Path, overwrite: bool = False) -> list[Path]:
    """Write every table, plot and the overview under ``output_dir``; existing files are replaced only with ``overwrite``.

    Everything is rendered before the first file is written, so a failure leaves no partial report.
    """
    files = render_files(report, output_dir)
    existing = [path for path in files if path.exists()]
    if existing and not overwrite:
        raise HasheeError(f"{existing[0]} already exists; choose another --output-dir or pass --overwrite")
    for path, content in files.items():
        if isinstance(content, bytes):
            with atomic.atomic_file(path, "wb") as handle:
                handle.write(content)
        else:
            atomic.write_text(path, content)
    report.files = list(files)
    return report.files


def overview_markdown(report: ComparisonReport) -> str:
    """Return report.md: every group's table and plot, the ELUE summary, notes and skipped items."""
    lines = [
        "# Comparison report",
        "",
        f"Cost is {UNIT} per example ({UNIT_NOTE}): counted by fvcore (`hashee count-flops`) where "
        "`flops_source` says counted, else the analytic estimate. Scores are in the metric's unit; "
        "`delta_vs_full` and the ELUE scores (`elue_vs_<reference>`: score minus the reference curve's score "
        "at the same cost, by linear interpolation) are in points, score x 100. "
        "`speedup_vs_full` divides measured throughputs taken in separate runs.",
        "",
    ]
    for group in report.groups:
        lines += [f"## {group.title}", "", to_markdown(group.table), f"![Pareto plot]({group.slug}-pareto.png)", ""]
    if not report.summary.empty:
        lines += ["## ELUE scores by curve", "", to_markdown(report.summary), ""]
    if report.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in report.notes), ""]
    if report.skipped:
        lines += ["## Skipped", "", *(f"- {item.item}: {item.reason}" for item in report.skipped), ""]
    return "\n".join(lines)
