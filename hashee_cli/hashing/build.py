"""Build a hash table for a backbone and a task's training split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from hashee_cli.backbones import load_config, load_tokenizer, resolve_model_source
from hashee_cli.data.encoding import encode_split, label_tensor
from hashee_cli.data.reading import DataConfig, load_split, resolve_task
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.hashing.builders import BuildInputs, get_hash_method
from hashee_cli.hashing.table import HashTable, resolve_exit_layers, tokenizer_identity
from hashee_cli.provenance import library_versions


@dataclass
class HashSettings:
    """The options of ``hashee build-hash``."""

    method: str = "freq"
    num_layers: int | None = None
    num_buckets: int | None = None
    exit_layers: list[int] | None = None
    default_exit_layer: int | None = None
    seed: int = 42
    order: str = "descending"
    mi_bins: int = 5


def _word_embeddings(model_name: str) -> np.ndarray:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(resolve_model_source(model_name))
    return model.get_input_embeddings().weight.detach().float().numpy()


def _without_special(input_ids: list[list[int]], special_ids: set[int]) -> list[np.ndarray]:
    return [np.asarray([token for token in ids if token not in special_ids], dtype=np.int64) for ids in input_ids]


def layer_statistics(
    table: HashTable, input_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase
) -> dict:
    """Return the share of tokens and of token types per exit layer over ``input_ids``.

    Token shares count every token of the model's input, special tokens
    included (they exit at the last layer), so their mean equals the mean
    exit layer that evaluation reports on the same text. Type shares count the distinct
    non-special types; a random-inconsistent table has none.
    """
    assigner = ExitAssigner(table, tokenizer.all_special_ids, max(len(tokenizer), table.tokenizer["vocab_size"]))
    layers = np.arange(1, table.num_layers + 1)
    token_counts = np.zeros(table.num_layers + 1, dtype=np.int64)
    chunk = 512
    for start in range(0, len(input_ids), chunk):
        rows = input_ids[start : start + chunk]
        width = max(len(ids) for ids in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, sequence in enumerate(rows):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        token_counts += torch.bincount(assigner(ids, mask).flatten(), minlength=table.num_layers + 1).numpy()
    token_counts[0] = 0
    total_tokens = int(token_counts.sum())

    stats = {
        "num_tokens": total_tokens,
        "mean_exit_layer": float((np.arange(table.num_layers + 1) * token_counts).sum() / max(total_tokens, 1)),
        "token_share": {str(layer): float(token_counts[layer] / max(total_tokens, 1)) for layer in layers},
    }

    if table.consistent:
        special = set(tokenizer.all_special_ids)
        types = sorted({token for ids in input_ids for token in ids} - special)
        type_layers = np.asarray([table.layer_of_token(token) for token in types], dtype=np.int64)
        type_counts = np.bincount(type_layers, minlength=table.num_layers + 1)
        stats["num_types"] = len(types)
        stats["type_share"] = {str(layer): float(type_counts[layer] / max(len(types), 1)) for layer in layers}

        # The most frequent types of each layer, to show what exits where.
        frequency = np.bincount(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in input_ids]))
        ranked = sorted(types, key=lambda token: (-frequency[token], token))
        examples: dict[str, list[str]] = {str(layer): [] for layer in layers}
        for token in ranked:
            bucket = examples[str(table.layer_of_token(token))]
            if len(bucket) < 5:
                bucket.append(tokenizer.convert_ids_to_tokens(token))
        stats["frequent_types"] = examples
    return stats


def build_hash_table(model_name: str, data: DataConfig, settings: HashSettings) -> HashTable:
    """Count the training split (only) and build the table that ``settings.method`` describes."""
    builder = get_hash_method(settings.method)
    if settings.order not in ("descending", "ascending"):
        raise HasheeError(f"--order must be descending or ascending, not {settings.order!r}")

    config = load_config(model_name)
    total_layers = config.num_hidden_layers
    num_layers = settings.num_layers if settings.num_layers is not None else total_layers
    if not 1 <= num_layers <= total_layers:
        raise HasheeError(f"--num-layers must be between 1 and {total_layers} for {model_name} (got {num_layers})")
    exit_layers = resolve_exit_layers(num_layers, settings.num_buckets, settings.exit_layers)
    default_layer = settings.default_exit_layer if settings.default_exit_layer is not None else num_layers
    if not 1 <= default_layer <= num_layers:
        raise HasheeError(f"--default-exit-layer {default_layer} is outside 1..{num_layers}")

    tokenizer = load_tokenizer(model_name)
    task_spec = data.task_spec()
    train = load_split(data, task_spec, "train", require_labels=settings.method == "mi")
    task = resolve_task(data, train) if settings.method == "mi" else task_spec
    encoded = encode_split(train, task, tokenizer, data.max_seq_length)
    vocab_size = max(len(tokenizer), config.vocab_size)

    labels = None
    if settings.method == "mi":
        labels = label_tensor(train, task).numpy()
    inputs = BuildInputs(
        vocab_size=vocab_size,
        num_buckets=len(exit_layers),
        seed=settings.seed,
        input_ids=_without_special(encoded.input_ids, set(tokenizer.all_special_ids)),
        labels=labels,
        problem_type=task.problem_type,
        embeddings=_word_embeddings(model_name) if settings.method == "cluster" else None,
        order=settings.order,
        mi_bins=settings.mi_bins,
    )
    buckets = builder(inputs)

    options = {"order": settings.order}
    if settings.method == "mi" and task.problem_type == "regression":
        options["mi_bins"] = settings.mi_bins
    table = HashTable(
        method=settings.method,
        num_layers=num_layers,
        exit_layers=exit_layers,
        default_exit_layer=default_layer,
        tokenizer=tokenizer_identity(tokenizer, model_name),
        bucket_by_token_id=None if buckets is None else buckets.tolist(),
        seed=settings.seed,
        options=options,
        data={
            "task": task.name,
            "split": "train",
            "source": train.source,
            "num_examples": len(train),
            "max_seq_length": data.max_seq_length,
        },
        versions=library_versions(),
    )
    table.stats = layer_statistics(table, encoded.input_ids, tokenizer)
    return table
