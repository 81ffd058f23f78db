"""Summarisation splits: documents with one or several reference summaries, tokenised and batched.

A split has a document column and a summary column (the task lists the
accepted names). Further references sit in columns named after the summary
column with a number, such as ``summary2`` and ``summary3``; empty extra
references are skipped. Every error names the file and line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from hashee_cli.data.reading import DataConfig, _pick_column, _read_frame
from hashee_cli.data.tasks import SPLITS, TaskSpec
from hashee_cli.errors import DataError, HasheeError
from hashee_cli.seq2seq.model import IGNORE_INDEX


@dataclass
class SummarySplit:
    """The documents of one split and, when the source has them, their references.

    ``references[i]`` lists the reference summaries of example ``i``, one
    per column of ``reference_columns``, the summary column first. Extra
    references may be empty strings, and ``scored_references`` leaves them out. ``line_numbers[i]`` is the line (or row)
    of example ``i`` in its source, for error messages.
    """

    name: str
    source: str
    documents: list[str]
    references: list[list[str]] | None
    reference_columns: tuple[str, ...]
    line_numbers: list[int]
    line_kind: str = "line"

    def __len__(self) -> int:
        return len(self.documents)

    def where(self, index: int) -> str:
        return f"{self.source} {self.line_kind} {self.line_numbers[index]}"

    def scored_references(self) -> list[list[str]]:
        """Return the non-empty references of every example, for ROUGE."""
        if self.references is None:
            raise HasheeError(f"{self.source} has no summary column, so there is nothing to score against")
        return [[text for text in references if text.strip()] for references in self.references]


def _text_values(frame: pd.DataFrame, column: str) -> list[str]:
    values = frame[column]
    return ["" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value) for value in values]


def _extra_reference_columns(frame: pd.DataFrame, summary_column: str) -> list[str]:
    pattern = re.compile(rf"{re.escape(str(summary_column).strip())}_?(\d+)")
    numbered = []
    for column in frame.columns:
        match = pattern.fullmatch(str(column).strip())
        if match:
            numbered.append((int(match.group(1)), column))
    return [column for _, column in sorted(numbered)]


def load_summaries(config: DataConfig, task: TaskSpec, split: str, require_summaries: bool = True) -> SummarySplit:
    """Load one split of a summarisation task and check that no document or first reference is empty.

    Without a summary column the split is returned with ``references=None``
    unless ``require_summaries`` is set, which raises a DataError instead.
    """
    if split not in SPLITS:
        raise HasheeError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    frame, source, first_line, kind = _read_frame(config, task, split)
    if len(frame) == 0:
        raise DataError(f"data file {source} has no examples; it needs at least one row after the header")
    line_numbers = [first_line + index for index in range(len(frame))]

    document_column = _pick_column(frame, task.text_columns[0], source, "document")
    documents = _text_values(frame, document_column)
    for index, document in enumerate(documents):
        if not document.strip():
            raise DataError(f"{source} {kind} {line_numbers[index]}: the document is empty; fix or remove the row")

    try:
        summary_column = _pick_column(frame, task.label_columns, source, "summary")
    except DataError:
        if require_summaries:
            raise
        return SummarySplit(split, source, documents, None, (), line_numbers, kind)

    columns = [summary_column, *_extra_reference_columns(frame, summary_column)]
    by_column = [_text_values(frame, column) for column in columns]
    references = []
    for index in range(len(frame)):
        if not by_column[0][index].strip():
            raise DataError(
                f"{source} {kind} {line_numbers[index]}: the summary (column {str(summary_column)!r}) is empty; "
                "fix or remove the row"
            )
        references.append([values[index] for values in by_column])
    return SummarySplit(split, source, documents, references, tuple(str(column) for column in columns), line_numbers, kind)


def subsample_summaries(split: SummarySplit, limit: int | None, seed: int) -> SummarySplit:
    """Return a seeded random subset of ``limit`` examples (in their original order), or the split itself."""
    if limit is None or limit >= len(split):
        return split
    if limit < 1:
        raise HasheeError(f"an example limit must be at least 1 (got {limit})")
    keep = np.sort(np.random.default_rng(seed).choice(len(split), size=limit, replace=False))
    return dataclasses.replace(
        split,
        documents=[split.documents[index] for index in keep],
        references=None if split.references is None else [split.references[index] for index in keep],
        line_numbers=[split.line_numbers[index] for index in keep],
    )


@dataclass
class EncodedSummaries:
    """A tokenised summarisation split.

    ``labels[i]`` are the target token ids of the first reference, ending
    with the end-of-sequence token and without the decoder start token.
    """

    split: SummarySplit
    input_ids: list[list[int]]
    labels: list[list[int]] | None
    num_truncated_documents: int
    num_truncated_summaries: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def _check_length(option: str, value: int, tokenizer: PreTrainedTokenizerBase) -> None:
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max < 100_000 and value > model_max:
        raise HasheeError(f"{option} {value} exceeds the model's maximum of {model_max} positions; lower it")
    if value < 2:
        raise HasheeError(f"{option} must be at least 2 (got {value})")


def _tokenize_truncating(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int, skip_first: bool
) -> tuple[list[list[int]], int]:
    """Tokenise texts, truncating to max_length tokens after dropping the first one when ``skip_first``.

    Returns the token ids and how many texts were truncated. Texts are first
    tokenised whole, so that the truncated ones can be counted, and only those
    are tokenised again with the tokenizer's own truncation (which keeps the
    special tokens at both ends).
    """
    drop = 1 if skip_first else 0
    token_ids = [ids[drop:] for ids in tokenizer(texts, truncation=False)["input_ids"]]
    too_long = [index for index, ids in enumerate(token_ids) if len(ids) > max_length]
    if too_long:
        truncated = tokenizer([texts[index] for index in too_long], truncation=True, max_length=max_length + drop)
        for position, index in enumerate(too_long):
            token_ids[index] = truncated["input_ids"][position][drop:]
    return token_ids, len(too_long)


def encode_summaries(
    split: SummarySplit,
    tokenizer: PreTrainedTokenizerBase,
    max_source_length: int,
    max_target_length: int,
    decoder_start_token_id: int,
) -> EncodedSummaries:
    """Tokenise documents (truncated to max_source_length) and first references (to max_target_length)."""
    _check_length("--max-seq-length", max_source_length, tokenizer)
    _check_length("--max-target-length", max_target_length, tokenizer)
    input_ids, truncated_documents = _tokenize_truncating(split.documents, tokenizer, max_source_length, skip_first=False)

    labels, truncated_summaries = None, 0
    if split.references is not None:
        targets = [references[0] for references in split.references]
        # BERT-style tokenizers open every text with [CLS], which is also the decoder start token of bert2bert:
        # it is fed to the decoder, never predicted.
        probe = tokenizer(targets[:1])["input_ids"][0]
        skip_first = bool(probe) and probe[0] == decoder_start_token_id
        labels, truncated_summaries = _tokenize_truncating(targets, tokenizer, max_target_length, skip_first)
    return EncodedSummaries(split, input_ids, labels, truncated_documents, truncated_summaries)


def collate_summaries(
    encoded: EncodedSummaries, indices: list[int], pad_token_id: int, decoder_start_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad the examples at ``indices`` on the right into one batch.

    Returns ``input_ids`` and ``attention_mask`` (B, S) and, with labels,
    ``labels`` (B, T) padded with -100, ``decoder_input_ids`` (the labels
    shifted right behind the decoder start token) and ``decoder_attention_mask``.
    """
    sources = [encoded.input_ids[index] for index in indices]
    width = max(len(ids) for ids in sources)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, ids in enumerate(sources):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoded.labels is None:
        return batch

    targets = [encoded.labels[index] for index in indices]
    length = max(len(ids) for ids in targets)
    labels = torch.full((len(indices), length), IGNORE_INDEX, dtype=torch.long)
    decoder_input_ids = torch.full((len(indices), length), pad_token_id, dtype=torch.long)
    decoder_attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
    for row, ids in enumerate(targets):
        labels[row, : len(ids)] = torch.tensor(ids)
        decoder_input_ids[row, : len(ids)] = torch.tensor([decoder_start_token_id, *ids[:-1]])
        decoder_attention_mask[row, : len(ids)] = 1
    batch.update(labels=labels, decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
    return batch
