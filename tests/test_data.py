"""Reading task splits: the real ELUE files with their traps, other formats, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_tsv
from hashee_cli.data.encoding import encode_split, training_batches
from hashee_cli.data.reading import DataConfig, load_split, resolve_task
from hashee_cli.data.tasks import get_task
from hashee_cli.errors import DataError, HasheeError

# Row counts from the data folder's README.
ELUE_COUNTS = {
    ("SST-2", "train"): 8544,
    ("SST-2", "dev"): 1101,
    ("SST-2", "test"): 2210,
    ("MRPC", "train"): 3668,
    ("MRPC", "dev"): 408,
    ("MRPC", "test"): 1725,
    ("STS-B", "train"): 5749,
    ("STS-B", "dev"): 1500,
    ("STS-B", "test"): 1379,
    ("SNLI", "dev"): 9842,
    ("SNLI", "test"): 9824,
    ("SciTail", "dev"): 1304,
    ("SciTail", "test"): 2126,
}


@pytest.mark.parametrize(("task_name", "split"), list(ELUE_COUNTS))
def test_elue_split_row_counts(elue_dir, task_name, split):
    config = DataConfig(task=task_name, data_dir=str(elue_dir))
    loaded = load_split(config, get_task(task_name), split)
    assert len(loaded) == ELUE_COUNTS[(task_name, split)]
    assert len(loaded.labels) == len(loaded)


def test_mrpc_bom_and_label_alias(elue_dir):
    config = DataConfig(task="MRPC", data_dir=str(elue_dir))
    task = get_task("MRPC")
    train = load_split(config, task, "train")
    test = load_split(config, task, "test")
    # The BOM must not hide the "Quality" column, and test's "label" column must be found too.
    assert set(train.labels) == {"0", "1"}
    assert set(test.labels) == {"0", "1"}
    assert train.texts[0][0].startswith("Amrozi accused his brother")
    assert len(train.texts) == 2


def test_unbalanced_quotes_kept_verbatim(elue_dir):
    config = DataConfig(task="MRPC", data_dir=str(elue_dir))
    dev = load_split(config, get_task("MRPC"), "dev")
    # Line 2 of dev.tsv: the second sentence starts with a stray double quote.
    assert dev.texts[1][0].startswith('" The foodservice pie business')
    assert dev.line_numbers[0] == 2


def test_stsb_targets_are_floats(elue_dir):
    config = DataConfig(task="STS-B", data_dir=str(elue_dir))
    train = load_split(config, get_task("STS-B"), "train")
    assert train.labels.dtype == np.float64
    assert train.labels.min() >= 0.0
    assert train.labels.max() <= 5.0


def test_snli_has_three_labels(elue_dir):
    config = DataConfig(task="SNLI", data_dir=str(elue_dir))
    dev = load_split(config, get_task("SNLI"), "dev")
    assert set(dev.labels) == {"0", "1", "2"}


def test_missing_train_split_names_file(elue_dir):
    config = DataConfig(task="SNLI", data_dir=str(elue_dir))
    with pytest.raises(DataError, match=r"SNLI/train\.tsv does not exist"):
        load_split(config, get_task("SNLI"), "train")


def test_unknown_task_suggests_name():
    with pytest.raises(HasheeError, match="did you mean SST-2"):
        get_task("SST2")


def test_empty_file_is_rejected(tmp_path):
    empty = tmp_path / "train.tsv"
    empty.write_text("")
    config = DataConfig(task="SST-2", train_file=str(empty))
    with pytest.raises(DataError, match=r"train\.tsv is empty"):
        load_split(config, get_task("SST-2"), "train")


def test_header_only_file_is_rejected(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [])
    config = DataConfig(task="SST-2", train_file=str(path))
    with pytest.raises(DataError, match="has no examples"):
        load_split(config, get_task("SST-2"), "train")


def test_missing_text_column_lists_columns(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["review", "label"], [["good", "1"]])
    config = DataConfig(task="SST-2", train_file=str(path))
    with pytest.raises(DataError, match="no text column.*'review'"):
        load_split(config, get_task("SST-2"), "train")


def test_missing_label_column(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["sentence", "stars"], [["good", "1"]])
    config = DataConfig(task="SST-2", train_file=str(path))
    with pytest.raises(DataError, match="no label column"):
        load_split(config, get_task("SST-2"), "train")


def test_label_outside_set_names_line(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [["good", "1"], ["bad", "0"], ["meh", "3"]])
    config = DataConfig(task="SST-2", train_file=str(path))
    with pytest.raises(DataError, match=r"train\.tsv line 4: label '3' is not one of"):
        load_split(config, get_task("SST-2"), "train")


def test_non_numeric_regression_target_names_line(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"], [["a", "b", "4.5"], ["c", "d", "high"]])
    config = DataConfig(task="STS-B", train_file=str(path))
    with pytest.raises(DataError, match=r"line 3: regression target 'high' is not a number"):
        load_split(config, get_task("STS-B"), "train")


def test_extra_field_is_malformed(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    config = DataConfig(task="SST-2", train_file=str(path))
    with pytest.raises(DataError, match="malformed"):
        load_split(config, get_task("SST-2"), "train")


def test_custom_csv_jsonl_parquet_agree(tmp_path):
    frame = pd.DataFrame({"review": ['a "quoted" film', "dull", "fine"], "stars": ["pos", "neg", "pos"]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "train.parquet")

    loaded = []
    for suffix in ("csv", "jsonl", "parquet"):
        config = DataConfig(task="reviews", train_file=str(tmp_path / f"train.{suffix}"), text_columns=["review"], label_column="stars")
        task = resolve_task(config)
        assert task.labels == ("neg", "pos")
        loaded.append(load_split(config, task, "train"))
    for split in loaded[1:]:
        assert split.texts == loaded[0].texts
        assert list(split.labels) == list(loaded[0].labels)


def test_jsonl_invalid_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "1"}) + "\n{not json}\n")
    config = DataConfig(task="mine", train_file=str(path), text_columns=["text"], label_column="label")
    with pytest.raises(DataError, match=r"train\.jsonl line 2: invalid JSON"):
        load_split(config, config.task_spec(), "train")


def test_single_class_custom_task_is_rejected(tmp_path):
    path = write_tsv(tmp_path / "train.tsv", ["text", "label"], [["a", "x"], ["b", "x"]])
    config = DataConfig(task="mine", train_file=str(path), text_columns=["text"], label_column="label")
    with pytest.raises(DataError, match="single label"):
        resolve_task(config)


def test_encoding_counts_truncation(elue_dir, minilm_tokenizer):
    config = DataConfig(task="SST-2", data_dir=str(elue_dir))
    task = get_task("SST-2")
    dev = load_split(config, task, "dev")
    encoded = encode_split(dev, task, minilm_tokenizer, max_seq_length=16)
    assert max(encoded.lengths) == 16
    assert encoded.num_truncated == sum(len(ids) > 16 for ids in minilm_tokenizer(dev.texts[0])["input_ids"])
    assert encoded.num_truncated > 0


def test_max_seq_length_above_model_limit(elue_dir, minilm_tokenizer):
    config = DataConfig(task="SST-2", data_dir=str(elue_dir))
    task = get_task("SST-2")
    dev = load_split(config, task, "dev")
    with pytest.raises(HasheeError, match="exceeds the model's maximum of 512"):
        encode_split(dev, task, minilm_tokenizer, max_seq_length=1024)


def test_training_batches_group_lengths_and_cover_all():
    import torch

    lengths = list(np.random.default_rng(0).integers(3, 60, size=500))
    batches = training_batches(lengths, 16, torch.Generator().manual_seed(0))
    flat = sorted(index for batch in batches for index in batch)
    assert flat == list(range(500))
    # Length grouping: the spread inside a batch is far below the spread overall.
    spreads = [max(lengths[i] for i in batch) - min(lengths[i] for i in batch) for batch in batches]
    assert np.mean(spreads) < 0.25 * (max(lengths) - min(lengths))
