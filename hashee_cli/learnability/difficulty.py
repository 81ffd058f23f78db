"""Difficulty label files: find, read, check and write them.

A difficulty file is a table with a text column ``sentence1``, an optional
second text column ``sentence2`` and a ``label`` column (TSV as in the SNLI
difficulty data, or CSV, JSON Lines, Parquet). Human-defined difficulty labels
are 0 or 1 (1 = difficult). Model-defined labels are one 0/1 per layer of a
multi-exit model, written as a list such as ``[1, 0, 1]``: 1 where that
layer's classifier predicted the example's label correctly.

Every error names the file and, where it has one, the line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashee_cli import atomic
from hashee_cli.data.reading import DataConfig, Split, load_split, read_columns
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import DataError, HasheeError
from hashee_cli.learnability.metrics import HUMAN_METRICS, MODEL_METRICS

KINDS = ("human", "model")
# Folder names of the SNLI difficulty data in the layout it ships in.
SHIPPED_FOLDERS = {"human": "snli_human_difficulty", "model": "snli_model_difficulty"}
SPLIT_FILES = {"train": ("train.txt", "train.tsv"), "test": ("test.txt", "test.tsv")}
LABELS_CONFIG_FILE = "labels_config.json"

FIRST_TEXT_COLUMNS = ("sentence1", "premise", "text_a", "sentence", "text")
SECOND_TEXT_COLUMNS = ("sentence2", "hypothesis", "text_b")
LABEL_COLUMN = "label"


@dataclass
class LabelResult:
    """Summary of a label build: example counts of the written files and each layer's accuracy on the labelled split."""

    output_dir: Path
    level: str
    num_layers: int
    num_train: int
    num_test: int
    layer_accuracy: list[float]
    num_dropped: int = 0
    seconds: float = 0.0


@dataclass
class DifficultyData:
    """Both splits of a difficulty data set with parsed labels.

    ``train.labels`` and ``test.labels`` are int64 arrays: shape (N,) for
    human-defined difficulty, (N, L) for model-defined difficulty with L layers.
    """

    kind: str
    task: TaskSpec
    train: Split
    test: Split

    @property
    def num_layers(self) -> int | None:
        return self.train.labels.shape[1] if self.kind == "model" else None


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise HasheeError(f"unknown --difficulty {kind!r}; use human (0/1 labels) or model (one 0/1 per layer)")
    return kind


def difficulty_task(kind: str, text_columns: tuple[tuple[str, ...], ...], num_layers: int | None = None) -> TaskSpec:
    """Return the task a probe learns: binary for human-defined difficulty, multi-label per layer for model-defined."""
    if check_kind(kind) == "human":
        return TaskSpec(
            name="human-difficulty",
            text_columns=text_columns,
            label_columns=(LABEL_COLUMN,),
            labels=("0", "1"),
            metrics=HUMAN_METRICS,
            main_metric="accuracy",
            description="1 when annotators reached no consensus on the example",
        )
    return TaskSpec(
        name="model-difficulty",
        text_columns=text_columns,
        label_columns=(LABEL_COLUMN,),
        problem_type="multi_label",
        labels=tuple(f"layer_{layer}" for layer in range(1, num_layers + 1)),
        metrics=MODEL_METRICS,
        main_metric="instance_gmean",
        description="one 0/1 per layer: did that layer of a multi-exit model predict the example correctly",
    )


def _find_split_file(folder: Path, split: str) -> Path | None:
    for name in SPLIT_FILES[split]:
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_files(kind: str, data_dir: str | Path | None, train_file: str | Path | None, test_file: str | Path | None) -> tuple[Path, Path]:
    """Return the training and test files: explicit paths first, else from ``data_dir``.

    ``data_dir`` is either a folder with ``train.txt``/``test.txt`` (or
    ``.tsv``), such as the output of ``hashee build-difficulty-labels``, or the
    shipped layout ``<data_dir>/snli_<kind>_difficulty/train.txt``.
    """
    check_kind(kind)
    files = {"train": Path(train_file).expanduser() if train_file else None, "test": Path(test_file).expanduser() if test_file else None}
    if all(files.values()):
        return files["train"], files["test"]
    if data_dir is None:
        raise HasheeError("pass --data-dir (a folder with train.txt and test.txt) or both --train-file and --test-file")

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder; pass the folder that contains the difficulty files")
    folder = data_dir if _find_split_file(data_dir, "train") else data_dir / SHIPPED_FOLDERS[kind]
    for split in ("train", "test"):
        if files[split] is None:
            files[split] = _find_split_file(folder, split)
        if files[split] is None:
            names = " or ".join(SPLIT_FILES[split])
            raise DataError(
                f"no {split} file in {folder} (looked for {names}); pass a --data-dir that contains them, "
                f"or --{split}-file"
            )
    return files["train"], files["test"]


def expected_layers(train_file: Path) -> int | None:
    """Return the layer count that ``labels_config.json`` beside ``train_file`` records, if there is one."""
    config_path = train_file.parent / LABELS_CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return int(config["num_layers"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"{config_path} has no valid num_layers ({error}); rebuild the labels or delete the file") from error


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in columns), None)


def _text_columns(path: Path, requested: list[str] | None) -> tuple[tuple[str, ...], ...]:
    if requested:
        if not 1 <= len(requested) <= 2:
            raise HasheeError(f"give one or two --text-column options (got {len(requested)})")
        return tuple((name,) for name in requested)
    columns = read_columns(path)
    first = _pick(columns, FIRST_TEXT_COLUMNS)
    if first is None:
        raise DataError(
            f"{path}: no text column (looked for {', '.join(FIRST_TEXT_COLUMNS)}; found {', '.join(columns)}); "
            "rename the column or pass --text-column"
        )
    second = _pick(columns, SECOND_TEXT_COLUMNS)
    return ((first,),) if second is None else ((first,), (second,))


def _parse_binary(split: Split) -> np.ndarray:
    labels = np.zeros(len(split), dtype=np.int64)
    for index, label in enumerate(split.labels):
        if label not in ("0", "1"):
            hint = "; for one 0/1 per layer use --difficulty model" if label.startswith("[") else ""
            raise DataError(f"{split.where(index)}: difficulty label {label!r} is not 0 or 1; fix or remove the row{hint}")
        labels[index] = int(label)
    return labels


def _parse_vector(label: str, where: str) -> list[int]:
    text = label.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise DataError(
            f"{where}: label {label!r} is not a list of 0/1 values in brackets such as [1, 0, 1]; "
            "for one 0/1 label per example use --difficulty human"
        )
    entries = [entry for entry in re.split(r"[,\s]+", text[1:-1]) if entry]
    if not entries:
        raise DataError(f"{where}: the label vector is empty; write one 0/1 per layer such as [1, 0, 1]")
    for position, entry in enumerate(entries, start=1):
        if entry not in ("0", "1"):
            raise DataError(f"{where}: entry {position} of the label vector {label} is {entry!r}, not 0 or 1; fix or remove the row")
    return [int(entry) for entry in entries]


def _parse_vectors(split: Split, num_layers: int | None, reference: str | None) -> np.ndarray:
    """Parse every row's label vector; all must have ``num_layers`` entries, else as many as the first row."""
    vectors = []
    for index, label in enumerate(split.labels):
        vector = _parse_vector(label, split.where(index))
        if num_layers is None:
            num_layers = len(vector)
            reference = f"{split.where(index)} has {num_layers}"
        if len(vector) != num_layers:
            raise DataError(
                f"{split.where(index)}: the label vector has {len(vector)} entries, but {reference}; "
                "give every row one 0/1 per layer of the multi-exit model"
            )
        vectors.append(vector)
    return np.asarray(vectors, dtype=np.int64)


def _check_both_classes(split: Split, labels: np.ndarray, kind: str) -> None:
    values = np.unique(labels)
    if len(values) > 1:
        return
    if kind == "human":
        raise DataError(f"{split.source}: every row has difficulty label {values[0]}; the probe needs examples of both classes, 0 and 1")
    raise DataError(
        f"{split.source}: every entry of every label vector is {values[0]}; the probe needs both 0s and 1s"
    )


def load_difficulty(
    kind: str,
    train_file: Path,
    test_file: Path,
    text_columns: list[str] | None = None,
    label_column: str = LABEL_COLUMN,
    num_layers: int | None = None,
) -> DifficultyData:
    """Read and check both splits of a difficulty data set.

    For model-defined difficulty every label vector must have ``num_layers``
    entries. Without ``num_layers`` the count comes from ``labels_config.json``
    beside the training file, or else from the first training row.
    """
    check_kind(kind)
    columns = _text_columns(train_file, text_columns)
    reading_task = TaskSpec(name=f"{kind}-difficulty", text_columns=columns, label_columns=(label_column,))
    config = DataConfig(task=reading_task.name, train_file=str(train_file), test_file=str(test_file))
    splits = {split: load_split(config, reading_task, split) for split in ("train", "test")}

    if kind == "human":
        labels = {split: _parse_binary(data) for split, data in splits.items()}
    else:
        reference = None
        if num_layers is not None:
            reference = f"the multi-exit model has {num_layers} layers (--layers)"
        else:
            num_layers = expected_layers(train_file)
            if num_layers is not None:
                reference = f"the multi-exit model has {num_layers} layers ({train_file.parent / LABELS_CONFIG_FILE})"
        labels = {"train": _parse_vectors(splits["train"], num_layers, reference)}
        num_layers = labels["train"].shape[1]
        reference = reference or f"{splits['train'].source} has {num_layers}"
        labels["test"] = _parse_vectors(splits["test"], num_layers, reference)

    for split, data in splits.items():
        _check_both_classes(data, labels[split], kind)

    train, test = (dataclasses.replace(splits[split], labels=labels[split]) for split in ("train", "test"))
    task = difficulty_task(kind, columns, num_layers if kind == "model" else None)
    return DifficultyData(kind, task, train, test)


def format_vector(vector: np.ndarray) -> str:
    """Write a label vector the way the SNLI model-difficulty files do: ``[1, 0, 1]``."""
    return "[" + ", ".join(str(int(value)) for value in vector) + "]"


def _clean(text: str) -> str:
    # The files are read as TSV with quoting disabled, so a tab or line break
    # inside a text would split the row. Tokenizers treat any whitespace as a
    # separator, so replacing them with spaces leaves the tokens unchanged.
    return re.sub(r"[\t\r\n]+", " ", text)


def write_difficulty_file(path: str | Path, texts: list[list[str]], labels: np.ndarray) -> None:
    """Write texts (one list per text field) and label vectors (N, L) as a TSV difficulty file, atomically."""
    columns = ["sentence1", "sentence2"][: len(texts)]
    frame = pd.DataFrame({name: [_clean(text) for text in field] for name, field in zip(columns, texts)})
    frame[LABEL_COLUMN] = [format_vector(vector) for vector in labels]
    # No quoting: readers of these files take double quotes as part of the text.
    with atomic.atomic_file(path) as handle:
        frame.to_csv(handle, sep="\t", index=False, quoting=csv.QUOTE_NONE)


def probe_split(num_examples: int, test_fraction: float, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted training and test indices: a seeded random share ``test_fraction`` goes to the test file."""
    num_test = round(num_examples * test_fraction)
    if num_test < 1 or num_test >= num_examples:
        raise HasheeError(
            f"{source}: {num_examples} labelled example(s) cannot be cut into a training and a test file with "
            f"--test-fraction {test_fraction}; label more examples (--label-limit) or change the fraction"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(order[num_test:]), np.sort(order[:num_test])
