"""Hash functions: build a HashTable from a tokenised training split or the embeddings.

Each builder returns one bucket per vocabulary id (-1 for ids the builder
leaves to the default layer). Buckets are 0-based and bucket 0 exits
earliest. Ranking builders (frequency, mutual information) cut the ranked
list of token types seen in training into buckets of equal numbers of types.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.preprocessing import KBinsDiscretizer

from hashee_cli.errors import HasheeError


@dataclass
class BuildInputs:
    """Everything a hash builder may read.

    ``input_ids`` are the training split's token ids per example, special
    tokens removed. ``labels`` are class ids or regression targets.
    ``embeddings`` is the backbone's input word-embedding matrix
    (vocab_size, hidden_size), needed only by the cluster method.
    """

    vocab_size: int
    num_buckets: int
    seed: int
    input_ids: list[np.ndarray]
    labels: np.ndarray | None = None
    problem_type: str = "classification"
    embeddings: np.ndarray | None = None
    order: str = "descending"
    mi_bins: int = 5


def _rank_into_buckets(scores: np.ndarray, seen: np.ndarray, num_buckets: int, order: str) -> np.ndarray:
    """Sort the seen types by score and cut the ranking into buckets of equal numbers of types.

    ``order="descending"`` puts the highest scores in bucket 0 (the earliest
    exit). Ties are broken by token id so that the result is deterministic.
    """
    ids = np.flatnonzero(seen)
    key = -scores[ids] if order == "descending" else scores[ids]
    ranked = ids[np.lexsort((ids, key))]

    buckets = np.full(len(seen), -1, dtype=np.int64)
    for bucket, chunk in enumerate(np.array_split(ranked, num_buckets)):
        buckets[chunk] = bucket
    return buckets


def _occurrence_counts(inputs: BuildInputs) -> np.ndarray:
    all_ids = np.concatenate(inputs.input_ids) if inputs.input_ids else np.zeros(0, dtype=np.int64)
    return np.bincount(all_ids, minlength=inputs.vocab_size)


def build_frequency(inputs: BuildInputs) -> np.ndarray:
    """Frequent types exit earliest: rank by occurrence count over the training split."""
    counts = _occurrence_counts(inputs)
    return _rank_into_buckets(counts.astype(np.float64), counts > 0, inputs.num_buckets, inputs.order)


def build_random(inputs: BuildInputs) -> np.ndarray:
    """Every vocabulary id gets a bucket uniformly at random from a seeded generator."""
    generator = np.random.default_rng(inputs.seed)
    return generator.integers(0, inputs.num_buckets, size=inputs.vocab_size, dtype=np.int64)


def token_label_mutual_information(
    input_ids: list[np.ndarray], labels: np.ndarray, vocab_size: int
) -> np.ndarray:
    """Return, for every vocabulary id, the mutual information (nats) between "the token occurs" and the label.

    Computed for all ids at once from an (examples x vocabulary) binary
    occurrence matrix. ``labels`` contains class ids 0..C-1. Ids that never
    occur get 0.
    """
    num_examples = len(input_ids)
    rows = np.concatenate([np.full(len(ids), row) for row, ids in enumerate(input_ids)])
    cols = np.concatenate(input_ids)
    occurs = sparse.csr_matrix((np.ones_like(cols, dtype=np.float64), (rows, cols)), shape=(num_examples, vocab_size))
    occurs.data[:] = 1.0  # repeated tokens in one example count once

    classes = int(labels.max()) + 1
    label_onehot = sparse.csr_matrix(
        (np.ones(num_examples), (np.arange(num_examples), labels)), shape=(num_examples, classes)
    )
    # joint[x, v, c]: number of examples with occurrence x of token v and label c, shape (2, V, C).
    with_token = np.asarray((occurs.T @ label_onehot).todense())
    class_totals = np.bincount(labels, minlength=classes).astype(np.float64)
    joint = np.stack([class_totals[None, :] - with_token, with_token]) / num_examples

    p_x = joint.sum(axis=2, keepdims=True)  # (2, V, 1)
    p_y = (class_totals / num_examples)[None, None, :]  # (1, 1, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = joint * np.log(joint / (p_x * p_y))
    return np.nan_to_num(terms, nan=0.0, posinf=0.0, neginf=0.0).sum(axis=(0, 2))


def _class_ids_for_mi(inputs: BuildInputs) -> np.ndarray:
    if inputs.labels is None:
        raise HasheeError("the mi hash needs labelled training data; the training split has no label column")
    if inputs.problem_type == "regression":
        if inputs.mi_bins < 2:
            raise HasheeError(f"--mi-bins must be at least 2 (got {inputs.mi_bins})")
        binner = KBinsDiscretizer(n_bins=inputs.mi_bins, encode="ordinal", strategy="quantile", quantile_method="averaged_inverted_cdf")
        return binner.fit_transform(inputs.labels.reshape(-1, 1)).astype(np.int64).ravel()
    return inputs.labels.astype(np.int64)


def build_mutual_information(inputs: BuildInputs) -> np.ndarray:
    """Rank seen types by mutual information with the label (regression targets binned by quantile)."""
    labels = _class_ids_for_mi(inputs)
    scores = token_label_mutual_information(inputs.input_ids, labels, inputs.vocab_size)
    seen = _occurrence_counts(inputs) > 0
    return _rank_into_buckets(scores, seen, inputs.num_buckets, inputs.order)


def build_cluster(inputs: BuildInputs) -> np.ndarray:
    """k-means over the word embeddings; clusters ordered by the summed norm of their members, ascending."""
    if inputs.embeddings is None:
        raise HasheeError("the cluster hash needs the backbone's word embeddings")
    embeddings = inputs.embeddings.astype(np.float32)
    kmeans = KMeans(n_clusters=inputs.num_buckets, random_state=inputs.seed, n_init=3)
    clusters = kmeans.fit_predict(embeddings)

    norms = np.linalg.norm(embeddings, axis=1)
    cluster_norm = np.bincount(clusters, weights=norms, minlength=inputs.num_buckets)
    bucket_of_cluster = np.empty(inputs.num_buckets, dtype=np.int64)
    bucket_of_cluster[np.argsort(cluster_norm, kind="stable")] = np.arange(inputs.num_buckets)

    buckets = np.full(inputs.vocab_size, -1, dtype=np.int64)
    buckets[: len(clusters)] = bucket_of_cluster[clusters]
    return buckets


HASH_METHODS: dict[str, Callable[[BuildInputs], np.ndarray | None]] = {
    "freq": build_frequency,
    "random": build_random,
    "random-inconsistent": lambda inputs: None,
    "mi": build_mutual_information,
    "cluster": build_cluster,
}


def get_hash_method(name: str) -> Callable[[BuildInputs], np.ndarray | None]:
    if name in HASH_METHODS:
        return HASH_METHODS[name]
    close = difflib.get_close_matches(name, list(HASH_METHODS), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise HasheeError(f"unknown hash method {name!r}; {hint}choose one of {', '.join(HASH_METHODS)}")
