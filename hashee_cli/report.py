"""Comparison tables from metrics CSVs written by `hashee evaluate`, with counts from `hashee count-flops`.

Reading is lenient: a file or row that cannot be compared is skipped with a
reason, and the report renders everything else. Scores stay in the unit the
metric has (accuracy 0..1); differences (``delta_vs_full`` and the ELUE
scores of ``hashee_cli.elue``) are in points, score x 100.

The cost axis (``flops_per_example``, in MACs) is the fvcore count when
every run of a task has one, and the analytic estimate otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashee_cli.errors import HasheeError
from hashee_cli.flops import UNIT

REQUIRED_COLUMNS = ("run", "task", "method", "split", "score", "main_metric")
# Rows are compared within one task, split and backbone.
GROUP_COLUMNS = ("task", "split", "model")
METRIC_COLUMNS = ("accuracy", "f1", "f1_macro", "pearson", "spearman", "rouge1", "rouge2", "rougeL")
# Columns that only some runs have (summarisation: both stacks and the cost per generated token).
OPTIONAL_COLUMNS = ("mean_exit_layer_encoder", "mean_exit_layer_decoder", "macs_per_generated_token", "tokens_per_second")


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
# Columns that `hashee count-flops` writes and that join its rows to metrics rows.
FLOP_COUNT_COLUMNS = ("run", "checkpoint", "task", "split", "flops_unit", "counted_flops_mean")
# An early-exit sweep writes one row per setting; its counts carry the same setting.
JOIN_COLUMNS = ("run", "checkpoint", "task", "split", "setting")
# Factor from MACs to each unit a count may be written in.
UNIT_FACTORS = {"MACs": 1.0, "FLOPs": 2.0}


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


def is_flop_count_csv(path: Path) -> bool:
    """Return whether ``path`` is a readable CSV written by `hashee count-flops`."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return "counted_flops_mean" in header


def read_flop_counts(paths: list[Path]) -> pd.DataFrame:
    """Concatenate count-flops CSVs; the last row of each run, checkpoint, task, split and setting wins."""
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
    if "setting" not in counts:
        counts["setting"] = ""
    counts["setting"] = counts["setting"].fillna("")
    return counts.drop_duplicates(subset=list(JOIN_COLUMNS), keep="last")


def _join_keys(frame: pd.DataFrame) -> pd.DataFrame:
    keys = pd.DataFrame(
        {column: frame[column] if column in frame else "" for column in JOIN_COLUMNS}, index=frame.index
    )
    keys = keys.fillna("").astype(str)
    # "runs/x" and "runs/x/" name the same checkpoint.
    keys["checkpoint"] = [os.path.normpath(path) if path not in ("", "nan") else "" for path in keys["checkpoint"]]
    return keys


def attach_flop_counts(metrics: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Add each run's counted cost per example, its unit and the number of examples counted to its metrics rows.

    Rows join on run, checkpoint, task, split and setting (the threshold or
    patience of an early-exit sweep). Runs without a count keep empty cells.
    """
    if counts.empty or "checkpoint" not in metrics.columns:
        return metrics
    right = _join_keys(counts).reset_index(drop=True)
    right["counted_flops_per_example"] = counts["counted_flops_mean"].to_numpy()
    right["counted_flops_unit"] = counts["flops_unit"].to_numpy()
    right["counted_examples"] = counts["num_examples"].to_numpy() if "num_examples" in counts else float("nan")
    joined = _join_keys(metrics).reset_index(drop=True).merge(right, on=list(JOIN_COLUMNS), how="left")
    attached = metrics.copy()
    attached["counted_flops_per_example"] = joined["counted_flops_per_example"].to_numpy()
    attached["counted_flops_unit"] = joined["counted_flops_unit"].to_numpy()
    attached["counted_examples"] = joined["counted_examples"].to_numpy()
    return attached


def unmatched_flop_counts(metrics: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    """Return the count rows that no metrics row joins to."""
    if counts.empty:
        return counts
    keys = set(map(tuple, _join_keys(metrics).to_numpy())) if "checkpoint" in metrics else set()
    matched = [tuple(key) in keys for key in _join_keys(counts).to_numpy()]
    return counts[[not hit for hit in matched]]


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


def collect_metrics(paths: list[Path]) -> tuple[pd.DataFrame, list[Skipped]]:
    """Read every metrics CSV that can be compared; return the rows and what was skipped.

    FLOPs CSVs of `hashee count-flops` among ``paths`` are joined to the
    metrics rows (``attach_flop_counts``). A file is skipped when it is
    missing, unreadable or lacks a required column. A row is skipped when its
    score is missing or its cost is in another unit; a count that matches no
    metrics row is listed as skipped too. Raises HasheeError only when
    nothing is left.
    """
    if not paths:
        raise HasheeError("give at least one metrics CSV written by `hashee evaluate`")
    frames, skipped = [], []
    count_paths = [path for path in paths if is_flop_count_csv(path)]
    counts = []
    for path in count_paths:
        try:
            counts.append(read_flop_counts([path]))
        except HasheeError as error:
            skipped.append(Skipped(str(path), str(error)))
    for path in paths:
        if path in count_paths:
            continue
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
    if counts:
        all_counts = pd.concat(counts, ignore_index=True, sort=False).drop_duplicates(subset=list(JOIN_COLUMNS), keep="last")
        metrics = attach_flop_counts(metrics, all_counts)
        for _, row in unmatched_flop_counts(metrics, all_counts).iterrows():
            setting = row.get("setting", "")
            suffix = f" [{setting}]" if isinstance(setting, str) and setting else ""
            skipped.append(
                Skipped(
                    f"FLOPs count of {row['run']}{suffix} ({row['task']} {row['split']})",
                    "matches no metrics row (run, checkpoint, task, split and setting must be those of `hashee evaluate`)",
                )
            )
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
        full_counted = full.get("counted_flops_per_example", np.nan) if full is not None else np.nan
        for _, row in group.iterrows():
            metric_names = [name for name in METRIC_COLUMNS if name in row and pd.notna(row[name])]
            optional = [name for name in OPTIONAL_COLUMNS if name in row and pd.notna(row[name])]
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
                    "exited_early_share": row.get("exited_early_share", np.nan),
                    "macs_per_example": macs,
                    "macs_ratio_to_full": macs / full_macs,
                    **_counted_columns(row, full_counted),
                    "num_layers": row.get("num_layers", np.nan),
                    "examples_per_second": speed,
                    "speedup_vs_full": speed / full_speed,
                    "num_examples": row.get("num_examples", np.nan),
                    **{name: row[name] for name in optional},
                }
            )
    return add_cost_axis(pd.DataFrame(rows))


def add_cost_axis(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``flops_per_example`` (MACs), its ratio to the full model and its source, per task, split and backbone.

    A group takes the fvcore counts when every row has one and the analytic
    estimate otherwise, so that no axis mixes the two.
    """
    table = table.copy()
    table["flops_per_example"] = table["macs_per_example"] if "macs_per_example" in table else np.nan
    table["flops_ratio_to_full"] = table["macs_ratio_to_full"] if "macs_ratio_to_full" in table else np.nan
    table["flops_source"] = "analytic"
    if "counted_flops_per_example" not in table or table.empty:
        return table
    factors = table["counted_flops_unit"].map(UNIT_FACTORS)
    counted_macs = pd.to_numeric(table["counted_flops_per_example"], errors="coerce") / factors
    for _, group in table.groupby(list(GROUP_COLUMNS), sort=False):
        if counted_macs[group.index].notna().all():
            table.loc[group.index, "flops_per_example"] = counted_macs[group.index]
            table.loc[group.index, "flops_ratio_to_full"] = table.loc[group.index, "counted_ratio_to_full"]
            table.loc[group.index, "flops_source"] = "counted"
    return table


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
        if "counted_flops_per_example" in group:
            missing = group[group["counted_flops_per_example"].isna()]
            if 0 < len(missing) < len(group):
                runs = ", ".join(dict.fromkeys(missing["run"].astype(str)))
                notes.append(
                    f"{where}: {len(missing)} of {len(group)} rows have no `hashee count-flops` figure ({runs}); "
                    "the cost axis uses the analytic estimate for every row"
                )
        if "exited_early_share" in group:
            for _, row in group[group["exited_early_share"] == 0].iterrows():
                notes.append(
                    f"{where}: {row['run']} at {row['setting']} exits no example early; every example ran all layers"
                )
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
