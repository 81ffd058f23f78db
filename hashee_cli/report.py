"""Comparison tables from metrics CSVs written by `hashee evaluate`.

Reading is lenient: a file or row that cannot be compared is skipped with a
reason, and the report renders everything else. Scores stay in the unit the
metric has (accuracy 0..1); differences (``delta_vs_full`` and the ELUE
scores of ``hashee_cli.elue``) are in points, score x 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashee_cli.errors import HasheeError
from hashee_cli.flops import UNIT

REQUIRED_COLUMNS = ("run", "task", "method", "split", "score", "main_metric")
# Rows are compared within one task, split and backbone.
GROUP_COLUMNS = ("task", "split", "model")
METRIC_COLUMNS = ("accuracy", "f1", "f1_macro", "pearson", "spearman")


@dataclass
class Skipped:
    """Something the report left out, and why."""

    item: str
    reason: str


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise HasheeError(f"metrics file {path} does not exist")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise HasheeError(f"metrics file {path} is not a readable CSV ({error})") from error


def read_metrics(paths: list[Path]) -> pd.DataFrame:
    """Concatenate metrics CSVs, naming the file that is missing or lacks required columns."""
    if not paths:
        raise HasheeError("give at least one metrics CSV written by `hashee evaluate`")
    frames = []
    for path in paths:
        frame = _read_csv(path)
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise HasheeError(f"metrics file {path} lacks the columns {', '.join(missing)}; write it with `hashee evaluate`")
        frame["source"] = str(path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)


def collect_metrics(paths: list[Path]) -> tuple[pd.DataFrame, list[Skipped]]:
    """Read every metrics CSV that can be compared; return the rows and what was skipped.

    A file is skipped when it is missing, unreadable or lacks a required
    column. A row is skipped when its score is missing or its cost is in
    another unit. Raises HasheeError only when nothing is left.
    """
    if not paths:
        raise HasheeError("give at least one metrics CSV written by `hashee evaluate`")
    frames, skipped = [], []
    for path in paths:
        try:
            frame = _read_csv(path)
        except HasheeError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            skipped.append(
                Skipped(str(path), f"lacks the columns {', '.join(missing)}; it is not a metrics CSV of `hashee evaluate`")
            )
            continue
        frame = frame.copy()
        frame["source"] = str(path)
        frames.append(frame)
    if not frames:
        reasons = "; ".join(f"{item.item}: {item.reason}" for item in skipped)
        raise HasheeError(f"no metrics CSV could be read ({reasons})")

    metrics = pd.concat(frames, ignore_index=True, sort=False)
    if "model" not in metrics:
        metrics["model"] = ""
    metrics["model"] = metrics["model"].fillna("")

    keep = pd.Series(True, index=metrics.index)
    scores = pd.to_numeric(metrics["score"], errors="coerce")
    for index in metrics.index[scores.isna()]:
        skipped.append(Skipped(_row_name(metrics.loc[index]), "has no score (evaluated on a split without labels?)"))
    keep &= scores.notna()
    if "flops_unit" in metrics:
        units = metrics["flops_unit"].fillna(UNIT)
        for index in metrics.index[keep & (units != UNIT)]:
            skipped.append(
                Skipped(_row_name(metrics.loc[index]), f"counts its cost in {units[index]}, not {UNIT}; it cannot share a FLOPs axis")
            )
        keep &= units == UNIT
    metrics = metrics[keep].reset_index(drop=True)
    metrics["score"] = pd.to_numeric(metrics["score"])
    metrics, mixed = _drop_mixed_metrics(metrics)
    return metrics, skipped + mixed


def _row_name(row: pd.Series) -> str:
    setting = row.get("setting", "")
    suffix = f" [{setting}]" if isinstance(setting, str) and setting else ""
    return f"{row.get('source', '')}: {row['run']}{suffix}"


def _drop_mixed_metrics(metrics: pd.DataFrame) -> tuple[pd.DataFrame, list[Skipped]]:
    """Keep, per task and split, only the rows scored by the most common main metric."""
    skipped = []
    keep = pd.Series(True, index=metrics.index)
    for _, group in metrics.groupby(["task", "split"], sort=False):
        counts = group["main_metric"].value_counts()
        if len(counts) < 2:
            continue
        chosen = counts.index[0]
        for index in group.index[group["main_metric"] != chosen]:
            keep[index] = False
            skipped.append(
                Skipped(_row_name(metrics.loc[index]), f"is scored by {metrics.loc[index, 'main_metric']}, the other rows of its task by {chosen}")
            )
    return metrics[keep].reset_index(drop=True), skipped


def _text(row: pd.Series, name: str) -> str:
    value = row.get(name, "")
    return "" if pd.isna(value) else str(value)


def series_name(row: pd.Series) -> str:
    """Return the curve a row belongs to: its method, with the hash function for HashEE."""
    method = _text(row, "method")
    hash_method = _text(row, "hash_method")
    return f"{method}-{hash_method}" if method == "hashee" and hash_method else method


def setting_name(row: pd.Series) -> str:
    """Return the setting that distinguishes a row from the other rows of its method."""
    method = _text(row, "method")
    if _text(row, "setting"):
        return _text(row, "setting")
    if method == "hashee":
        return f"exit layers {_text(row, 'exit_layers')}"
    num_layers = row.get("num_layers", np.nan)
    if method in ("full", "static") and pd.notna(num_layers):
        return f"{int(num_layers)} layers"
    if method == "multi-exit":
        return "last layer"
    return ""


def _full_row(group: pd.DataFrame) -> pd.Series | None:
    """Return the row of the deepest full (or static) model of a group: the baseline of ratios."""
    candidates = group[group["method"].isin(["full", "static"])]
    if candidates.empty:
        return None
    if "num_layers" in candidates:
        deepest = candidates["num_layers"].max()
        candidates = candidates[candidates["num_layers"] == deepest]
        full = candidates[candidates["method"] == "full"]
        if not full.empty:
            candidates = full
    return candidates.iloc[-1]


def comparison_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Return one row per run and setting, with its score, cost and speed against the full model of its group.

    ``delta_vs_full`` is in points (score x 100). The full model is the
    deepest ``full`` (or ``static``) row of the same task, split and backbone;
    without one the ratios are empty. ``macs_ratio_to_full`` compares the
    analytic cost and ``speedup_vs_full`` the measured throughput.
    """
    metrics = metrics.copy()
    if "model" not in metrics:
        metrics["model"] = ""
    metrics["model"] = metrics["model"].fillna("")
    rows = []
    for (task, split, model), group in metrics.groupby(list(GROUP_COLUMNS), sort=False):
        full = _full_row(group)
        full_score = full["score"] if full is not None else np.nan
        full_speed = full.get("examples_per_second", np.nan) if full is not None else np.nan
        full_macs = full.get("macs_per_example", np.nan) if full is not None else np.nan
        for _, row in group.iterrows():
            metric_names = [name for name in METRIC_COLUMNS if name in row and pd.notna(row[name])]
            macs = row.get("macs_per_example", np.nan)
            speed = row.get("examples_per_second", np.nan)
            rows.append(
                {
                    "task": task,
                    "split": split,
                    "model": model,
                    "run": row["run"],
                    "method": row["method"],
                    "series": series_name(row),
                    "hash": _text(row, "hash_method"),
                    "exit_layers": _text(row, "exit_layers"),
                    "setting": setting_name(row),
                    **{name: row[name] for name in metric_names},
                    "score": row["score"],
                    "main_metric": row["main_metric"],
                    "delta_vs_full": 100 * (row["score"] - full_score),
                    "mean_exit_layer": row.get("mean_exit_layer", np.nan),
                    "macs_per_example": macs,
                    "macs_ratio_to_full": macs / full_macs,
                    "num_layers": row.get("num_layers", np.nan),
                    "examples_per_second": speed,
                    "speedup_vs_full": speed / full_speed,
                    "num_examples": row.get("num_examples", np.nan),
                }
            )
    return pd.DataFrame(rows)


def group_notes(table: pd.DataFrame) -> list[str]:
    """Return warnings about comparisons that the table makes but a reader should doubt."""
    notes = []
    tasks = list(dict.fromkeys(table["task"]))
    if len(tasks) > 1:
        notes.append(
            f"the runs come from {len(tasks)} tasks ({', '.join(tasks)}); each task gets its own table, plot and "
            "ELUE scores, and no score is compared across tasks"
        )
    for (task, split, model), group in table.groupby(list(GROUP_COLUMNS), sort=False):
        where = f"{task} {split}" + (f" ({model})" if model else "")
        if _full_row(group) is None:
            notes.append(f"{where}: no full model, so the ratios to the full model are empty")
        sizes = sorted(group["num_examples"].dropna().astype(int).unique())
        if len(sizes) > 1:
            notes.append(f"{where}: runs were evaluated on different numbers of examples ({', '.join(map(str, sizes))}); scores are not strictly comparable")
    return notes


def to_markdown(table: pd.DataFrame) -> str:
    """Render a table as GitHub-flavoured markdown with four decimals."""
    formatted = table.copy()
    for column in formatted.columns:
        if pd.api.types.is_float_dtype(formatted[column]):
            formatted[column] = formatted[column].map(lambda value: "" if pd.isna(value) else f"{value:.4f}")
    header = "| " + " | ".join(formatted.columns) + " |"
    divider = "| " + " | ".join("---" for _ in formatted.columns) + " |"
    lines = ["| " + " | ".join(str(value) for value in row) + " |" for row in formatted.itertuples(index=False)]
    return "\n".join([header, divider, *lines]) + "\n"
