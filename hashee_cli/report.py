"""Comparison tables from metrics CSVs written by `hashee evaluate`, with counts from `hashee count-flops`."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from hashee_cli.errors import HasheeError

REQUIRED_COLUMNS = ("run", "task", "method", "split", "score", "main_metric")
METRIC_COLUMNS = ("accuracy", "f1", "f1_macro", "pearson", "spearman", "rouge1", "rouge2", "rougeL")
# Columns that only some runs have (summarisation: both stacks and the cost per generated token).
OPTIONAL_COLUMNS = ("mean_exit_layer_encoder", "mean_exit_layer_decoder", "macs_per_generated_token", "tokens_per_second")
# Columns that `hashee count-flops` writes and that join its rows to metrics rows.
FLOP_COUNT_COLUMNS = ("run", "checkpoint", "task", "split", "flops_unit", "counted_flops_mean")
JOIN_COLUMNS = ("run", "checkpoint", "task", "split")


def read_metrics(paths: list[Path]) -> pd.DataFrame:
    """Concatenate metrics CSVs, naming the file that is missing or lacks required columns."""
    if not paths:
        raise HasheeError("give at least one metrics CSV written by `hashee evaluate`")
    frames = []
    for path in paths:
        if not path.is_file():
            raise HasheeError(f"metrics file {path} does not exist")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise HasheeError(f"metrics file {path} is not a readable CSV ({error})") from error
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise HasheeError(f"metrics file {path} lacks the columns {', '.join(missing)}; write it with `hashee evaluate`")
        frame["source"] = str(path)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)


def is_flop_count_csv(path: Path) -> bool:
    """Return whether ``path`` is a readable CSV written by `hashee count-flops`."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return "counted_flops_mean" in header


def read_flop_counts(paths: list[Path]) -> pd.DataFrame:
    """Concatenate count-flops CSVs; the last row of each run, checkpoint, task and split wins."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        missing = [column for column in FLOP_COUNT_COLUMNS if column not in frame.columns]
        if missing:
            raise HasheeError(f"FLOPs file {path} lacks the columns {', '.join(missing)}; write it with `hashee count-flops`")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(FLOP_COUNT_COLUMNS))
    counts = pd.concat(frames, ignore_index=True, sort=False)
    return counts.drop_duplicates(subset=list(JOIN_COLUMNS), keep="last")


def _join_keys(frame: pd.DataFrame) -> pd.DataFrame:
    keys = frame[list(JOIN_COLUMNS)].astype(str).copy()
    # "runs/x" and "runs/x/" name the same checkpoint.
    keys["checkpoint"] = [os.path.normpath(path) if path not in ("", "nan") else "" for path in keys["checkpoint"]]
    return keys


def attach_flop_counts(metrics: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Add each run's counted cost per example, its unit and the number of examples counted to its metrics rows.

    Rows join on run, checkpoint, task and split. Runs without a count keep empty cells.
    """
    if counts.empty or "checkpoint" not in metrics.columns:
        return metrics
    right = _join_keys(counts)
    right["counted_flops_per_example"] = counts["counted_flops_mean"].to_numpy()
    right["counted_flops_unit"] = counts["flops_unit"].to_numpy()
    right["counted_examples"] = counts["num_examples"].to_numpy() if "num_examples" in counts else float("nan")
    joined = _join_keys(metrics).merge(right, on=list(JOIN_COLUMNS), how="left")
    attached = metrics.copy()
    attached["counted_flops_per_example"] = joined["counted_flops_per_example"].to_numpy()
    attached["counted_flops_unit"] = joined["counted_flops_unit"].to_numpy()
    attached["counted_examples"] = joined["counted_examples"].to_numpy()
    return attached


def _counted_columns(row: pd.Series, full_counted: float) -> dict:
    """Return the counted cost of a comparison row and its ratio to the full model's, when counts were given."""
    if "counted_flops_per_example" not in row:
        return {}
    counted = row["counted_flops_per_example"]
    return {
        "counted_flops_per_example": counted,
        "counted_flops_unit": row["counted_flops_unit"] if pd.notna(row["counted_flops_unit"]) else "",
        "counted_ratio_to_full": counted / full_counted,
        "counted_examples": row["counted_examples"],
    }


def comparison_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its score, the difference to the full model of the same task and split, and exit depth.

    ``delta_vs_full`` is in points (score x 100) when the full model was
    evaluated on the same task and split, else empty. ``macs_ratio_to_full``
    and ``speedup_vs_full`` compare the analytic cost and the measured
    throughput with that full model. ``counted_ratio_to_full`` does the same
    for the fvcore counts that ``attach_flop_counts`` added.
    """
    rows = []
    for (task, split), group in metrics.groupby(["task", "split"], sort=False):
        full = group[group["method"] == "full"]
        full_score = full["score"].iloc[-1] if len(full) else float("nan")
        full_speed = full["examples_per_second"].iloc[-1] if len(full) and "examples_per_second" in full else float("nan")
        full_macs = full["macs_per_example"].iloc[-1] if len(full) and "macs_per_example" in full else float("nan")
        full_counted = full["counted_flops_per_example"].iloc[-1] if len(full) and "counted_flops_per_example" in full else float("nan")
        for _, row in group.iterrows():
            metric_names = [name for name in METRIC_COLUMNS if name in row and pd.notna(row[name])]
            optional = [name for name in OPTIONAL_COLUMNS if name in row and pd.notna(row[name])]
            rows.append(
                {
                    "task": task,
                    "split": split,
                    "run": row["run"],
                    "method": row["method"],
                    "hash": row.get("hash_method", "") if pd.notna(row.get("hash_method", "")) else "",
                    "exit_layers": row.get("exit_layers", "") if pd.notna(row.get("exit_layers", "")) else "",
                    **{name: row[name] for name in metric_names},
                    "delta_vs_full": 100 * (row["score"] - full_score),
                    "mean_exit_layer": row.get("mean_exit_layer", float("nan")),
                    "macs_per_example": row.get("macs_per_example", float("nan")),
                    "macs_ratio_to_full": row.get("macs_per_example", float("nan")) / full_macs,
                    **_counted_columns(row, full_counted),
                    "num_layers": row.get("num_layers", float("nan")),
                    "examples_per_second": row.get("examples_per_second", float("nan")),
                    "speedup_vs_full": row.get("examples_per_second", float("nan")) / full_speed,
                    **{name: row[name] for name in optional},
                }
            )
    return pd.DataFrame(rows)


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
