"""Read task splits from local files or the Hugging Face Hub into labelled examples.

Local files may be TSV, CSV, JSON Lines or Parquet. TSV is read with quoting
disabled because benchmark text contains unbalanced double quotes that are not
CSV quoting, and with ``utf-8-sig`` so that a byte order mark does not end up
in the first column name. Every error names the file and, where it has one,
the line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hashee_cli.data.tasks import ELUE_SPLIT_FILES, HUB_SPLIT_NAMES, SPLITS, TaskSpec, custom_task, get_task
from hashee_cli.errors import DataError, HasheeError

SUPPORTED_SUFFIXES = (".tsv", ".txt", ".csv", ".jsonl", ".json", ".parquet")


@dataclass
class DataConfig:
    """Data settings of a run: the task and the source of each split, saved with every checkpoint.

    Exactly one source applies per split, in this order: an explicit file for
    that split, the ELUE layout ``<data_dir>/<task>/<file>``, or a hub data set.
    """

    task: str = "SST-2"
    data_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    hub_dataset: str | None = None
    hub_config: str | None = None
    text_columns: list[str] = field(default_factory=list)
    label_column: str | None = None
    problem_type: str = "classification"
    max_seq_length: int = 128

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataConfig:
        known = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        return cls(**known)

    def split_file(self, split: str) -> str | None:
        return {"train": self.train_file, "dev": self.dev_file, "test": self.test_file}[split]

    def task_spec(self) -> TaskSpec:
        """Return the task: a registered one, or a custom one from the column options."""
        if self.text_columns or self.label_column:
            if not self.text_columns or not self.label_column:
                raise HasheeError("custom data needs both --text-column (once or twice) and --label-column")
            name = self.task if self.task and self.task.lower() != "custom" else "custom"
            return custom_task(self.text_columns, self.label_column, self.problem_type, name=name)
        return get_task(self.task)


@dataclass
class Split:
    """The labelled examples of one split.

    ``texts`` contains one list per text field. ``labels`` contains label
    strings for classification and floats for regression.
    ``line_numbers[i]`` is the line (or row) of example ``i`` in its source,
    for error messages.
    """

    name: str
    source: str
    texts: list[list[str]]
    labels: np.ndarray | None
    line_numbers: list[int]
    line_kind: str = "line"

    def __len__(self) -> int:
        return len(self.texts[0])

    def where(self, index: int) -> str:
        return f"{self.source} {self.line_kind} {self.line_numbers[index]}"


def _read_local(path: Path) -> tuple[pd.DataFrame, int, str]:
    """Read a local table; return it with the source line of row 0 and the unit of position."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check the path or --data-dir")
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; pass a .tsv, .csv, .jsonl or .parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty; it needs a header row and at least one example")

    suffix = path.suffix.lower()
    try:
        if suffix in (".tsv", ".txt"):
            frame = pd.read_csv(
                path,
                sep="\t",
                quoting=csv.QUOTE_NONE,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
            )
            return frame, 2, "line"
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            return frame, 2, "line"
        if suffix in (".jsonl", ".json"):
            return _read_json_lines(path), 1, "line"
        if suffix == ".parquet":
            return pd.read_parquet(path), 1, "row"
    except pd.errors.ParserError as error:
        raise DataError(f"data file {path} is malformed: {error}; check that every row has the header's columns") from error
    except UnicodeDecodeError as error:
        raise DataError(f"data file {path} is not UTF-8 text (byte {error.start}); re-encode it as UTF-8") from error
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read data file {path}: {error}") from error
    raise DataError(f"data file {path} has an unsupported suffix {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def read_columns(path: str | Path) -> list[str]:
    """Return the column names of a local data file, with the same checks as ``load_split``."""
    frame, _, _ = _read_local(Path(path).expanduser())
    return [str(column).strip() for column in frame.columns]


def _read_json_lines(path: Path) -> pd.DataFrame:
    records = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number}: invalid JSON ({error.msg}); write one JSON object per line") from error
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    if not records:
        raise DataError(f"data file {path} has no examples")
    return pd.DataFrame.from_records(records)


def _read_hub(config: DataConfig, split: str) -> tuple[pd.DataFrame, str]:
    import datasets

    last_error: Exception | None = None
    for hub_split in HUB_SPLIT_NAMES[split]:
        try:
            dataset = datasets.load_dataset(config.hub_dataset, config.hub_config, split=hub_split)
        except ValueError as error:
            # An unknown split name raises ValueError; try the next alias.
            last_error = error
            continue
        except (OSError, ConnectionError, FileNotFoundError) as error:
            raise DataError(
                f"cannot load hub data set {config.hub_dataset!r}: {error}; check the name and network access, "
                "or download the splits and pass --train-file/--dev-file/--test-file"
            ) from error
        return dataset.to_pandas(), f"{config.hub_dataset}[{hub_split}]"
    raise DataError(
        f"hub data set {config.hub_dataset!r} has no split for {split!r} "
        f"(tried {', '.join(HUB_SPLIT_NAMES[split])}): {last_error}"
    )


def split_path(config: DataConfig, task: TaskSpec, split: str) -> Path | None:
    """Return the local file for ``split``, or None when it comes from the hub."""
    explicit = config.split_file(split)
    if explicit:
        return Path(explicit).expanduser()
    if config.data_dir:
        folder = Path(config.data_dir).expanduser() / (task.directory or task.name)
        candidates = [folder / name for name in ELUE_SPLIT_FILES[split]]
        for candidate in candidates:
            if candidate.exists():
                return candidate
        return candidates[0]
    if config.hub_dataset:
        return None
    raise DataError(
        f"no source for the {split} split; pass --data-dir (ELUE layout <dir>/{task.name}/{ELUE_SPLIT_FILES[split][0]}), "
        f"--{split}-file, or --hub-dataset"
    )


def _pick_column(frame: pd.DataFrame, names: tuple[str, ...], source: str, what: str) -> str:
    stripped = {str(column).strip(): column for column in frame.columns}
    for name in names:
        if name in stripped:
            return stripped[name]
    columns = ", ".join(repr(str(column)) for column in frame.columns)
    raise DataError(
        f"{source}: no {what} column (looked for {', '.join(repr(name) for name in names)}; found {columns}); "
        "rename the column or pass --text-column/--label-column"
    )


def _read_frame(config: DataConfig, task: TaskSpec, split: str) -> tuple[pd.DataFrame, str, int, str]:
    path = split_path(config, task, split)
    if path is None:
        frame, source = _read_hub(config, split)
        return frame, source, 1, "row"
    frame, first_line, kind = _read_local(path)
    return frame, str(path), first_line, kind


def load_split(config: DataConfig, task: TaskSpec, split: str, require_labels: bool = True) -> Split:
    """Load one split of a task and check its columns and labels.

    Classification labels must be in ``task.labels`` when the task fixes them.
    Regression targets must be numbers. Any violation names the file and line.
    """
    if split not in SPLITS:
        raise HasheeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")

    frame, source, first_line, kind = _read_frame(config, task, split)
    if len(frame) == 0:
        raise DataError(f"data file {source} has no examples; it needs at least one row after the header")

    text_columns = [_pick_column(frame, names, source, "text") for names in task.text_columns]
    line_numbers = [first_line + index for index in range(len(frame))]

    texts = []
    for column in text_columns:
        values = frame[column]
        missing = values.isna().to_numpy()
        if missing.any():
            index = int(np.argmax(missing))
            raise DataError(
                f"{source} {kind} {line_numbers[index]}: the text column {column!r} is missing; "
                "check that the row has every column of the header"
            )
        texts.append(values.astype(str).tolist())

    labels = None
    try:
        label_column = _pick_column(frame, task.label_columns, source, "label")
    except DataError:
        if require_labels:
            raise
        label_column = None
    if label_column is not None:
        labels = _parse_labels(frame[label_column], task, source, kind, line_numbers)

    return Split(split, source, texts, labels, line_numbers, kind)


def _parse_labels(values: pd.Series, task: TaskSpec, source: str, kind: str, line_numbers: list[int]) -> np.ndarray:
    if task.problem_type == "regression":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            index = int(np.argmax(bad))
            raise DataError(
                f"{source} {kind} {line_numbers[index]}: regression target {values.iloc[index]!r} is not a number; "
                "fix or remove the row"
            )
        return numbers

    labels = values.astype(str).str.strip().to_numpy(dtype=object)
    if task.labels is not None:
        allowed = set(task.labels)
        for index, label in enumerate(labels):
            if label not in allowed:
                raise DataError(
                    f"{source} {kind} {line_numbers[index]}: label {label!r} is not one of the task's labels "
                    f"({', '.join(task.labels)}); fix the row or use a task whose labels match"
                )
    else:
        empty = labels == ""
        if empty.any():
            index = int(np.argmax(empty))
            raise DataError(f"{source} {kind} {line_numbers[index]}: the label is empty; fix or remove the row")
    return labels


def infer_label_set(labels: np.ndarray) -> tuple[str, ...]:
    """Return the sorted label set of a training split, numerically when every label is an integer."""
    unique = sorted(set(labels.tolist()))
    try:
        return tuple(sorted(unique, key=int))
    except ValueError:
        return tuple(unique)


def resolve_task(config: DataConfig, train: Split | None = None) -> TaskSpec:
    """Return the task with its label set fixed, taking it from ``train`` for custom tasks."""
    task = config.task_spec()
    if task.problem_type == "classification" and task.labels is None:
        if train is None:
            train = load_split(config, task, "train")
        labels = infer_label_set(train.labels)
        if len(labels) < 2:
            raise DataError(f"{train.source}: the training split has a single label ({labels[0]}); a classifier needs two or more")
        task = dataclasses.replace(task, labels=labels)
    return task


def subsample(split: Split, limit: int | None, seed: int) -> Split:
    """Return a seeded random subset of ``limit`` examples (in their original order), or the split itself."""
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise HasheeError(f"an example limit must be at least 1 (got {limit})")
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return dataclasses.replace(
        split,
        texts=[[column[index] for index in keep] for column in split.texts],
        labels=None if split.labels is None else split.labels[keep],
        line_numbers=[split.line_numbers[index] for index in keep],
    )
