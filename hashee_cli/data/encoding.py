"""Tokenise splits and group them into padded batches.

Training batches are grouped by length (random mega-batches sorted by
length) so that little compute is spent on padding. Evaluation batches are
sorted by length and the results are put back in the original order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from hashee_cli.data.reading import Split
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError


@dataclass
class EncodedSplit:
    """A tokenised split: one list of token ids per example, and label ids or targets."""

    split: Split
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor | None
    num_truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def select(self, indices: list[int]) -> EncodedSplit:
        """Return the examples at ``indices``; ``split`` still refers to the whole source split."""
        token_type_ids = [self.token_type_ids[i] for i in indices] if self.token_type_ids is not None else None
        labels = self.labels[indices] if self.labels is not None else None
        return EncodedSplit(self.split, [self.input_ids[i] for i in indices], token_type_ids, labels, 0)


def label_tensor(split: Split, task: TaskSpec) -> torch.Tensor | None:
    """Map label strings to class ids (int64), or regression targets and 0/1 label matrices to float32."""
    if split.labels is None:
        return None
    if task.problem_type in ("regression", "multi_label"):
        return torch.tensor(np.asarray(split.labels, dtype=np.float32))
    index = {label: position for position, label in enumerate(task.labels)}
    ids = []
    for row, label in enumerate(split.labels):
        if label not in index:
            raise HasheeError(
                f"{split.where(row)}: label {label!r} is not one of the model's labels ({', '.join(task.labels)}); "
                "evaluate on data with the same label set as training"
            )
        ids.append(index[label])
    return torch.tensor(ids, dtype=torch.long)


def encode_split(
    split: Split, task: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> EncodedSplit:
    """Tokenise every example of ``split``, truncating to ``max_seq_length`` tokens."""
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max is not None and model_max < 100_000 and max_seq_length > model_max:
        raise HasheeError(
            f"--max-seq-length {max_seq_length} exceeds the model's maximum of {model_max} positions; lower it"
        )
    if max_seq_length < 2:
        raise HasheeError(f"--max-seq-length must be at least 2 (got {max_seq_length})")

    # Tokenise without truncation first so that the truncated examples can be
    # counted, then re-encode only those with the tokenizer's own truncation.
    encoded = tokenizer(*split.texts, truncation=False)
    input_ids = list(encoded["input_ids"])
    token_type_ids = list(encoded["token_type_ids"]) if "token_type_ids" in encoded else None

    too_long = [index for index, ids in enumerate(input_ids) if len(ids) > max_seq_length]
    if too_long:
        texts = [[field[index] for index in too_long] for field in split.texts]
        truncated = tokenizer(*texts, truncation=True, max_length=max_seq_length)
        for position, index in enumerate(too_long):
            input_ids[index] = truncated["input_ids"][position]
            if token_type_ids is not None:
                token_type_ids[index] = truncated["token_type_ids"][position]

    return EncodedSplit(split, input_ids, token_type_ids, label_tensor(split, task), len(too_long))


def collate(encoded: EncodedSplit, indices: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad the examples at ``indices`` on the right into one batch of tensors.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
    tokenizer makes them), each of shape (batch, max length in the batch), and
    ``labels`` of shape (batch,).
    """
    lengths = [len(encoded.input_ids[i]) for i in indices]
    width = max(lengths)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long) if encoded.token_type_ids else None

    for row, (index, length) in enumerate(zip(indices, lengths)):
        input_ids[row, :length] = torch.tensor(encoded.input_ids[index])
        attention_mask[row, :length] = 1
        if token_type_ids is not None:
            token_type_ids[row, :length] = torch.tensor(encoded.token_type_ids[index])

    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    if encoded.labels is not None:
        batch["labels"] = encoded.labels[indices]
    return batch


def training_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Return one epoch of shuffled, length-grouped batches of example indices."""
    if batch_size < 1:
        raise HasheeError(f"--batch-size must be at least 1 (got {batch_size})")
    order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def shard_batch(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Return one process's share of a global batch: every ``world_size``-th example from position ``rank``.

    Every process draws the same global batches, so together the processes
    train on exactly the batches that one process would. Striding (rather
    than cutting the batch in blocks) gives each process examples of similar
    lengths, because a length-grouped batch is sorted by length. Samplers
    that shard a dataset per process (torch's DistributedSampler, transformers'
    DistributedLengthGroupedSampler) repeat examples to even out the shards,
    and the latter groups lengths by the per-process batch size, so their
    batches differ from a one-process run's.
    """
    return indices[rank::world_size]


def evaluation_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Return batches of indices sorted by length, longest first; callers restore the order."""
    if batch_size < 1:
        raise HasheeError(f"--batch-size must be at least 1 (got {batch_size})")
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def iterate_batches(
    encoded: EncodedSplit, batches: list[list[int]], pad_token_id: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    for indices in batches:
        yield indices, collate(encoded, indices, pad_token_id)
