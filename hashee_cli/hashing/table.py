"""The hash table file: token id -> bucket -> exit layer, with what it was built from.

A table is a JSON file. ``bucket_by_token_id[i]`` is the bucket of vocabulary
id ``i`` (-1 for a token never seen when the table was built) and
``exit_layers[b]`` is the 1-based exit layer of bucket ``b``. Tokens with
bucket -1 exit at ``default_exit_layer``. The random-inconsistent method has
no per-token buckets: every occurrence draws its own bucket.

The file is written with sorted keys and no timestamps, so the same inputs
and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from hashee_cli import atomic
from hashee_cli.errors import HashTableError, HasheeError

FORMAT_NAME = "hashee-hash-table"
FORMAT_VERSION = 1


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Return a SHA-256 digest of the tokenizer's (token, id) pairs, ordered by id."""
    pairs = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase, model_name: str) -> dict:
    return {
        "model": model_name,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "fingerprint": vocabulary_fingerprint(tokenizer),
    }


def spread_exit_layers(num_buckets: int, num_layers: int) -> list[int]:
    """Spread ``num_buckets`` buckets evenly over layers 1..num_layers; the last bucket exits at the last layer.

    With as many buckets as layers, bucket b exits at layer b + 1.
    """
    return [math.ceil((bucket + 1) * num_layers / num_buckets) for bucket in range(num_buckets)]


def resolve_exit_layers(num_layers: int, num_buckets: int | None, exit_layers: list[int] | None) -> list[int]:
    """Return the exit layer of each bucket from either an explicit list or a bucket count."""
    if num_layers < 1:
        raise HasheeError(f"--num-layers must be at least 1 (got {num_layers})")
    if exit_layers:
        if num_buckets is not None and num_buckets != len(exit_layers):
            raise HasheeError(
                f"--num-buckets {num_buckets} does not match the {len(exit_layers)} values of --exit-layers; give one of them"
            )
        for layer in exit_layers:
            if not 1 <= layer <= num_layers:
                raise HasheeError(
                    f"exit layer {layer} is outside 1..{num_layers}; the model has {num_layers} layers"
                )
        return list(exit_layers)
    buckets = num_layers if num_buckets is None else num_buckets
    if buckets < 1:
        raise HasheeError(f"--num-buckets must be at least 1 (got {buckets})")
    return spread_exit_layers(buckets, num_layers)


@dataclass
class HashTable:
    """A token-to-exit-layer mapping and the facts needed to check that it fits a model."""

    method: str
    num_layers: int
    exit_layers: list[int]
    default_exit_layer: int
    tokenizer: dict
    bucket_by_token_id: list[int] | None
    seed: int | None = None
    options: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    @property
    def num_buckets(self) -> int:
        return len(self.exit_layers)

    @property
    def consistent(self) -> bool:
        """Whether every occurrence of a token exits at the same layer."""
        return self.bucket_by_token_id is not None

    def layer_of_token(self, token_id: int) -> int:
        if self.bucket_by_token_id is None:
            raise HashTableError(f"a {self.method} table has no fixed layer per token")
        if 0 <= token_id < len(self.bucket_by_token_id):
            bucket = self.bucket_by_token_id[token_id]
            if bucket >= 0:
                return self.exit_layers[bucket]
        return self.default_exit_layer

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        atomic.write_text(path, text + "\n")

    def check_compatible(self, tokenizer: PreTrainedTokenizerBase, num_layers: int, source: str) -> None:
        """Raise HashTableError unless this table was built for ``tokenizer`` and ``num_layers`` layers."""
        identity = self.tokenizer
        if identity.get("vocab_size") != len(tokenizer) or identity.get("fingerprint") != vocabulary_fingerprint(tokenizer):
            raise HashTableError(
                f"hash table {source} was built for another tokenizer ({identity.get('model')}, "
                f"vocabulary of {identity.get('vocab_size')}) than the model's (vocabulary of {len(tokenizer)}); "
                "rebuild it with `hashee build-hash --model` set to this backbone"
            )
        if self.num_layers != num_layers:
            raise HashTableError(
                f"hash table {source} was built for {self.num_layers} layers but the model uses {num_layers}; "
                f"rebuild it with --num-layers {num_layers} or set --num-layers {self.num_layers}"
            )


def _validate(data: dict, source: str) -> None:
    if data.get("format") != FORMAT_NAME:
        raise HashTableError(f"{source} is not a hashee hash table (no format: {FORMAT_NAME}); build one with `hashee build-hash`")
    if data.get("format_version") != FORMAT_VERSION:
        raise HashTableError(
            f"{source} has hash table format version {data.get('format_version')}, "
            f"this hashee reads version {FORMAT_VERSION}; rebuild it"
        )
    num_layers = data.get("num_layers")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise HashTableError(f"{source}: num_layers must be a positive integer, not {num_layers!r}")
    exit_layers = data.get("exit_layers") or []
    for layer in [*exit_layers, data.get("default_exit_layer")]:
        if not isinstance(layer, int) or not 1 <= layer <= num_layers:
            raise HashTableError(f"{source}: exit layer {layer!r} is outside 1..{num_layers}; rebuild the table")
    buckets = data.get("bucket_by_token_id")
    if buckets is not None:
        bad = [bucket for bucket in buckets if not isinstance(bucket, int) or not -1 <= bucket < len(exit_layers)]
        if bad:
            raise HashTableError(f"{source}: bucket {bad[0]!r} is outside -1..{len(exit_layers) - 1}; rebuild the table")


def load_hash_table(path: str | Path) -> HashTable:
    """Read and validate a hash table file."""
    path = Path(path)
    if not path.is_file():
        raise HashTableError(f"hash table {path} does not exist; build one with `hashee build-hash`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HashTableError(f"hash table {path} is not valid JSON ({error}); rebuild it with `hashee build-hash`") from error
    if not isinstance(data, dict):
        raise HashTableError(f"{path} is not a hashee hash table; build one with `hashee build-hash`")
    _validate(data, str(path))
    fields = {key: data[key] for key in HashTable.__dataclass_fields__ if key in data}
    try:
        return HashTable(**fields)
    except TypeError as error:
        raise HashTableError(f"hash table {path} lacks a field ({error}); rebuild it") from error
