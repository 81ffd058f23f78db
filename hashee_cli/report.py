"""Comparison tables from metrics CSVs written by `hashee evaluate`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hashee_cli.errors import HasheeError

REQUIRED_COLUMNS = ("run", "task", "method", "split", "score", "main_metric")
METRIC_COLUMNS = ("accuracy", "f1", "f1_macro", "pearson", "spearman", "rouge1", "rouge2", "rougeL")
# Columns that only some runs have (summarisation: both stacks and the cost per generated token).
OPTIONAL_COLUMNS = ("mean_exit_layer_encoder", "mean_exit_layer_decoder", "macs_per_generated_token", "tokens_per_second")


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


def comparison_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its score, the difference to the full model of the same task and split, and exit depth.

    ``delta_vs_full`` is in points (score x 100) when the full model was
    evaluated on the same task and split, else empty. ``macs_ratio_to_full``
    and ``speedup_vs_full`` compare the analytic cost and the measured
    throughput with that full model.
    """
    rows = []
    for (task, split), group in metrics.groupby(["task", "split"], sort=False):
        full = group[group["method"] == "full"]
        full_score = full["score"].iloc[-1] if len(full) else float("nan")
        full_speed = full["examples_per_second"].iloc[-1] if len(full) and "examples_per_second" in full else float("nan")
        full_macs = full["macs_per_example"].iloc[-1] if len(full) and "macs_per_example" in full else float("nan")
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
