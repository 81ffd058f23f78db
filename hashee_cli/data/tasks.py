"""Task registry: what each benchmark task reads, predicts and is scored by.

A task names its text columns (with the aliases that real files use), its
label column, its label set or regression target, and its metrics. The ELUE
tasks are registered by name. Any other local file or hub data set becomes a
``custom`` task built from command-line options.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Literal

from hashee_cli.errors import HasheeError

# "multi_label" predicts one 0/1 per label name (independent sigmoid outputs).
ProblemType = Literal["classification", "regression", "multi_label"]

# ELUE file names for each split; "test_full.tsv" is ELUE's labelled test split.
ELUE_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.tsv",),
    "dev": ("dev.tsv",),
    "test": ("test_full.tsv", "test.tsv"),
}

# Split names in Hugging Face datasets for each of our split names.
HUB_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "dev": ("validation", "dev", "validation_matched"),
    "test": ("test", "validation_mismatched"),
}

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """A task's columns, labels and metrics.

    ``text_columns`` has one entry per text field: one for single sentences,
    two for pairs. Each entry lists the column names accepted for that field,
    and the first match wins. ``labels`` is the ordered label set of a
    classification task, or None when it is taken from the training split.
    """

    name: str
    text_columns: tuple[tuple[str, ...], ...]
    label_columns: tuple[str, ...]
    problem_type: ProblemType = "classification"
    labels: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    directory: str | None = None
    description: str = ""
    hub_defaults: dict = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        if self.problem_type == "regression":
            return 1
        if self.labels is None:
            raise HasheeError(f"task {self.name} has no label set yet; it is read from the training split")
        return len(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        data = dict(data)
        data["text_columns"] = tuple(tuple(names) for names in data["text_columns"])
        data["label_columns"] = tuple(data["label_columns"])
        data["metrics"] = tuple(data["metrics"])
        if data.get("labels") is not None:
            data["labels"] = tuple(str(label) for label in data["labels"])
        return cls(**data)


_PAIR_COLUMNS = (("premise", "sentence1", "text_a"), ("hypothesis", "sentence2", "text_b"))

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="SST-2",
            text_columns=(("sentence", "text"),),
            label_columns=("label",),
            labels=("0", "1"),
            description="Stanford Sentiment Treebank, binary sentiment of full sentences",
        ),
        TaskSpec(
            name="MRPC",
            text_columns=(("#1 String", "sentence1"), ("#2 String", "sentence2")),
            label_columns=("Quality", "label"),
            labels=("0", "1"),
            metrics=("accuracy", "f1"),
            main_metric="f1",
            description="Microsoft Research Paraphrase Corpus, sentence pairs",
        ),
        TaskSpec(
            name="STS-B",
            text_columns=(("sentence1",), ("sentence2",)),
            label_columns=("label", "score"),
            problem_type="regression",
            metrics=("pearson", "spearman"),
            main_metric="spearman",
            description="Semantic Textual Similarity Benchmark, similarity from 0 to 5",
        ),
        TaskSpec(
            name="SNLI",
            text_columns=_PAIR_COLUMNS,
            label_columns=("label", "gold_label"),
            labels=("0", "1", "2"),
            description="Stanford Natural Language Inference, 3 classes",
        ),
        TaskSpec(
            name="SciTail",
            text_columns=_PAIR_COLUMNS,
            label_columns=("label",),
            labels=("0", "1"),
            description="SciTail science entailment, 2 classes",
        ),
        TaskSpec(
            name="IMDb",
            text_columns=(("sentence", "text", "review"),),
            label_columns=("label", "sentiment"),
            labels=("0", "1"),
            description="IMDb movie reviews, binary sentiment",
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    """Look up a registered task by name, case-insensitively, with a suggestion on a typo."""
    by_lower = {key.lower(): spec for key, spec in TASKS.items()}
    spec = by_lower.get(name.lower())
    if spec is not None:
        return spec
    known = list(TASKS)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise HasheeError(
        f"unknown task {name!r}; {hint}known tasks: {', '.join(known)}, "
        "or pass --text-column and --label-column for your own files"
    )


def custom_task(
    text_columns: list[str],
    label_column: str,
    problem_type: ProblemType = "classification",
    labels: list[str] | None = None,
    name: str = "custom",
) -> TaskSpec:
    """Build a task for the user's own files from column names."""
    if not 1 <= len(text_columns) <= 2:
        raise HasheeError(f"give one or two --text-column options (got {len(text_columns)})")
    if problem_type not in ("classification", "regression"):
        raise HasheeError(f"--problem-type must be classification or regression, not {problem_type!r}")
    if problem_type == "regression":
        metrics, main = ("pearson", "spearman"), "spearman"
    else:
        metrics, main = ("accuracy", "f1_macro"), "accuracy"
    return TaskSpec(
        name=name,
        text_columns=tuple((column,) for column in text_columns),
        label_columns=(label_column,),
        problem_type=problem_type,
        labels=tuple(labels) if labels else None,
        metrics=metrics,
        main_metric=main,
    )
