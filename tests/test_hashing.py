"""Hash functions on real SST-2 text, the table file, and the exit assigner."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from hashee_cli.data.reading import DataConfig
from hashee_cli.errors import HashTableError, HasheeError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.hashing.build import HashSettings, build_hash_table
from hashee_cli.hashing.builders import token_label_mutual_information
from hashee_cli.hashing.table import load_hash_table, resolve_exit_layers, spread_exit_layers


@pytest.fixture(scope="module")
def sst2(elue_dir) -> DataConfig:
    return DataConfig(task="SST-2", data_dir=str(elue_dir))


@pytest.fixture(scope="module")
def freq_table(sst2):
    return build_hash_table("minilm-l6", sst2, HashSettings(method="freq"))


def _train_token_counts(elue_dir, tokenizer, split="train") -> Counter:
    from hashee_cli.data.reading import load_split
    from hashee_cli.data.tasks import get_task

    loaded = load_split(DataConfig(task="SST-2", data_dir=str(elue_dir)), get_task("SST-2"), split)
    counts = Counter()
    for ids in tokenizer(loaded.texts[0], truncation=True, max_length=128, add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    return counts


def test_spread_exit_layers():
    assert spread_exit_layers(6, 6) == [1, 2, 3, 4, 5, 6]
    assert spread_exit_layers(3, 6) == [2, 4, 6]
    assert spread_exit_layers(1, 6) == [6]
    assert spread_exit_layers(4, 6)[-1] == 6


def test_exit_layers_outside_range_rejected():
    with pytest.raises(HasheeError, match="exit layer 7 is outside 1..6"):
        resolve_exit_layers(6, None, [1, 7])
    with pytest.raises(HasheeError, match="exit layer 0 is outside 1..6"):
        resolve_exit_layers(6, None, [0, 6])


def test_frequency_most_frequent_tokens_exit_first(freq_table, elue_dir, minilm_tokenizer):
    counts = _train_token_counts(elue_dir, minilm_tokenizer)
    top = [token for token, _ in counts.most_common(20)]
    assert all(freq_table.layer_of_token(token) == 1 for token in top)
    # Layers never decrease as counts fall: a more frequent type never exits later.
    ranked = sorted(counts, key=lambda token: -counts[token])
    layers = [freq_table.layer_of_token(token) for token in ranked]
    for more_frequent, less_frequent, token_a, token_b in zip(layers, layers[1:], ranked, ranked[1:]):
        if counts[token_a] > counts[token_b]:
            assert more_frequent <= less_frequent
    assert freq_table.layer_of_token(ranked[-1]) == 6
    # Zipf: the earliest bucket holds a sixth of the types but most occurrences.
    assert freq_table.stats["type_share"]["1"] == pytest.approx(1 / 6, abs=0.01)
    assert freq_table.stats["token_share"]["1"] > 0.6


def test_frequency_never_counts_dev_or_test(freq_table, elue_dir, minilm_tokenizer):
    train = _train_token_counts(elue_dir, minilm_tokenizer)
    held_out = _train_token_counts(elue_dir, minilm_tokenizer, "dev") + _train_token_counts(elue_dir, minilm_tokenizer, "test")
    unseen = [token for token in held_out if token not in train]
    assert len(unseen) > 50
    assert all(freq_table.bucket_by_token_id[token] == -1 for token in unseen)
    assert all(freq_table.layer_of_token(token) == freq_table.default_exit_layer for token in unseen)


def test_default_exit_layer_option(sst2):
    table = build_hash_table("minilm-l6", sst2, HashSettings(method="freq", default_exit_layer=3))
    unseen_id = table.bucket_by_token_id.index(-1)
    assert table.layer_of_token(unseen_id) == 3


def test_same_seed_same_bytes(sst2, tmp_path):
    first = build_hash_table("minilm-l6", sst2, HashSettings(method="random", seed=7))
    second = build_hash_table("minilm-l6", sst2, HashSettings(method="random", seed=7))
    other = build_hash_table("minilm-l6", sst2, HashSettings(method="random", seed=8))
    first.save(tmp_path / "a.json")
    second.save(tmp_path / "b.json")
    other.save(tmp_path / "c.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_random_covers_vocabulary_uniformly(sst2):
    table = build_hash_table("minilm-l6", sst2, HashSettings(method="random", num_buckets=3))
    buckets = np.asarray(table.bucket_by_token_id)
    assert (buckets >= 0).all()
    shares = np.bincount(buckets, minlength=3) / len(buckets)
    assert np.allclose(shares, 1 / 3, atol=0.02)
    assert table.exit_layers == [2, 4, 6]


def test_random_inconsistent_varies_per_occurrence(sst2, minilm_tokenizer):
    table = build_hash_table("minilm-l6", sst2, HashSettings(method="random-inconsistent"))
    assert table.bucket_by_token_id is None
    assigner = ExitAssigner(table, minilm_tokenizer.all_special_ids, len(minilm_tokenizer))
    batch = minilm_tokenizer(["the the the the the the the the the the the the"], return_tensors="pt")
    layers = assigner(batch["input_ids"], batch["attention_mask"])[0, 1:-1]
    assert len(set(layers.tolist())) > 1
    # The same example in another batch, and a fresh salt, give the same / different draws.
    padded = minilm_tokenizer(
        ["the the the the the the the the the the the the", "a much longer sentence " * 5], padding=True, return_tensors="pt"
    )
    again = assigner(padded["input_ids"], padded["attention_mask"])[0, 1:13]
    assert torch.equal(again, layers)
    salted = assigner(batch["input_ids"], batch["attention_mask"], salt=5)[0, 1:-1]
    assert not torch.equal(salted, layers)


def test_mi_matches_sklearn_per_token(elue_dir, minilm_tokenizer):
    from hashee_cli.data.reading import load_split
    from hashee_cli.data.tasks import get_task

    loaded = load_split(DataConfig(task="SST-2", data_dir=str(elue_dir)), get_task("SST-2"), "dev")
    ids = [np.asarray(row) for row in minilm_tokenizer(loaded.texts[0], add_special_tokens=False)["input_ids"]]
    labels = loaded.labels.astype(int)
    scores = token_label_mutual_information(ids, labels, len(minilm_tokenizer))
    for token in minilm_tokenizer.convert_tokens_to_ids(["bad", "the", "worst", "film", "best"]):
        occurs = np.asarray([int(token in row) for row in ids])
        assert scores[token] == pytest.approx(mutual_info_score(occurs, labels), abs=1e-9)


def test_mi_two_classes_ranks_sentiment_words_early(sst2, minilm_tokenizer):
    table = build_hash_table("minilm-l6", sst2, HashSettings(method="mi", num_buckets=6))
    for word in ("bad", "worst", "best"):
        assert table.layer_of_token(minilm_tokenizer.convert_tokens_to_ids(word)) <= 2
    ascending = build_hash_table("minilm-l6", sst2, HashSettings(method="mi", num_buckets=6, order="ascending"))
    assert ascending.layer_of_token(minilm_tokenizer.convert_tokens_to_ids("bad")) >= 5


def test_mi_three_classes(elue_dir):
    snli = DataConfig(task="SNLI", data_dir=str(elue_dir), train_file=str(elue_dir / "SNLI" / "dev.tsv"))
    table = build_hash_table("minilm-l6", snli, HashSettings(method="mi", num_buckets=3))
    assert table.data["num_examples"] == 9842
    assert set(table.bucket_by_token_id) == {-1, 0, 1, 2}


def test_mi_regression_is_binned(elue_dir):
    stsb = DataConfig(task="STS-B", data_dir=str(elue_dir))
    table = build_hash_table("minilm-l6", stsb, HashSettings(method="mi", mi_bins=4))
    assert table.options["mi_bins"] == 4
    assert set(table.bucket_by_token_id) == {-1, 0, 1, 2, 3, 4, 5}


def test_cluster_orders_by_norm(sst2):
    from transformers import AutoModel

    from hashee_cli.backbones import resolve_model_source

    table = build_hash_table("minilm-l6", sst2, HashSettings(method="cluster", num_buckets=3))
    buckets = np.asarray(table.bucket_by_token_id)
    assert (buckets >= 0).all()
    embeddings = AutoModel.from_pretrained(resolve_model_source("minilm-l6")).get_input_embeddings().weight.detach().numpy()
    norms = np.linalg.norm(embeddings, axis=1)
    summed = [norms[buckets == bucket].sum() for bucket in range(3)]
    assert summed == sorted(summed)


def test_table_round_trip_and_compatibility(freq_table, tmp_path, minilm_tokenizer, tiny_model_dir):
    path = tmp_path / "freq.json"
    freq_table.save(path)
    loaded = load_hash_table(path)
    assert loaded.bucket_by_token_id == freq_table.bucket_by_token_id
    loaded.check_compatible(minilm_tokenizer, 6, str(path))

    with pytest.raises(HashTableError, match="built for 6 layers but the model uses 4"):
        loaded.check_compatible(minilm_tokenizer, 4, str(path))

    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_model_dir("bert"))
    other.add_tokens(["hashee-extra-token"])
    with pytest.raises(HashTableError, match="built for another tokenizer"):
        loaded.check_compatible(other, 6, str(path))


def test_corrupt_table_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "hashee-hash-table", "format_version": 1, "num_layers": 6, "exit_layers": [1, 9]')
    with pytest.raises(HashTableError, match="not valid JSON"):
        load_hash_table(path)
    path.write_text('{"format": "hashee-hash-table", "format_version": 1, "num_layers": 6, "exit_layers": [1, 9], "default_exit_layer": 6}')
    with pytest.raises(HashTableError, match="exit layer 9 is outside 1..6"):
        load_hash_table(path)


def test_assigner_special_tokens_and_padding(freq_table, minilm_tokenizer):
    assigner = ExitAssigner(freq_table, minilm_tokenizer.all_special_ids, len(minilm_tokenizer))
    batch = minilm_tokenizer(["the film", "a longer sentence about the film"], padding=True, return_tensors="pt")
    layers = assigner(batch["input_ids"], batch["attention_mask"])
    assert layers[0, 0] == 6  # [CLS]
    assert layers[0, 3] == 6  # [SEP]
    assert (layers[0, 4:] == 0).all()  # padding
    assert layers[0, 1] == 1  # "the"
