"""`hashee learnability-probe` and `hashee build-difficulty-labels` end to end, with a tiny model and real data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import error_line, invoke, write_tsv
from hashee_cli.checkpoint import load_checkpoint
from hashee_cli.data.encoding import collate, encode_split
from hashee_cli.data.reading import DataConfig, Split, load_split
from hashee_cli.learnability.conll import read_conll

TRAIN_SMALL = ["--epochs", "1", "--batch-size", "16", "--train-limit", "64", "--dev-limit", "32"]
PROBE_SMALL = ["--train-limit", "60", "--test-limit", "40", "--seeds", "1,2", "--epochs", "1", "--max-seq-length", "32"]

# A small CoNLL-2003-style file: token, POS tag, chunk tag, NER tag; a blank line between sentences.
CONLL_TEXT = """-DOCSTART- -X- -X- O

Ada NNP B-NP B-PER
Lovelace NNP I-NP I-PER
worked VBD B-VP O
with IN B-PP O
Charles NNP B-NP B-PER
Babbage NNP I-NP I-PER
in IN B-PP O
London NNP B-NP B-LOC
. . O O

The DT B-NP O
Bank NNP I-NP B-ORG
of IN B-PP I-ORG
England NNP B-NP I-ORG
left VBD B-VP O
rates NNS B-NP O
unchanged JJ B-ADJP O
on IN B-PP O
Thursday NNP B-NP O
. . O O

Shares NNS B-NP O
of IN B-PP O
Siemens NNP B-NP B-ORG
rose VBD B-VP O
in IN B-PP O
Frankfurt NNP B-NP B-LOC
. . O O

Marie NNP B-NP B-PER
Curie NNP I-NP I-PER
moved VBD B-VP O
to TO B-PP O
Paris NNP B-NP B-LOC
in IN B-PP O
1891 CD B-NP O
. . O O

Toyota NNP B-NP B-ORG
opened VBD B-VP O
a DT B-NP O
plant NN I-NP O
near IN B-PP O
Osaka NNP B-NP B-LOC
. . O O
"""


def _read_vectors(path) -> list[list[int]]:
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    return [json.loads(label) for label in frame["label"]]


@pytest.fixture(scope="module")
def sst2_labels(tiny_bert, elue_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("labels") / "sst2"
    result = invoke(
        "build-difficulty-labels", "--model", tiny_bert, "--data-dir", elue_dir, "--label-limit", "50", *TRAIN_SMALL, "-o", output
    )
    assert result.exit_code == 0, result.output
    return output


def test_sst2_labels_layout(sst2_labels):
    names = {path.name for path in sst2_labels.iterdir()}
    assert names == {"train.tsv", "test.tsv", "labels_config.json", "multi-exit"}
    train = pd.read_csv(sst2_labels / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    assert list(train.columns) == ["sentence1", "label"]
    vectors = _read_vectors(sst2_labels / "train.tsv") + _read_vectors(sst2_labels / "test.tsv")
    assert len(vectors) == 50
    assert len(_read_vectors(sst2_labels / "test.tsv")) == 10
    assert {len(vector) for vector in vectors} == {4}
    assert {value for vector in vectors for value in vector} <= {0, 1}

    config = json.loads((sst2_labels / "labels_config.json").read_text())
    assert config["num_layers"] == 4
    assert config["label_split"] == "dev"
    assert config["label_source"].endswith("SST-2/dev.tsv")
    # Each layer's accuracy is the share of 1s in its column.
    assert config["layer_accuracy"] == pytest.approx(np.mean(vectors, axis=0).tolist())


def test_sst2_labels_are_layer_correctness(sst2_labels, elue_dir):
    """Recompute each layer's prediction from the saved multi-exit checkpoint and compare with the written vectors."""
    checkpoint = load_checkpoint(sst2_labels / "multi-exit")
    written = pd.read_csv(sst2_labels / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    dev = load_split(DataConfig(data_dir=str(elue_dir)), checkpoint.task, "dev")
    gold = dict(zip(dev.texts[0], dev.labels))
    texts = written["sentence1"].tolist()
    split = Split("train", "train.tsv", [texts], np.array([gold[text] for text in texts], dtype=object), list(range(len(texts))))
    encoded = encode_split(split, checkpoint.task, checkpoint.tokenizer, 128)
    batch = collate(encoded, list(range(len(encoded))), checkpoint.tokenizer.pad_token_id)
    labels = batch.pop("labels")
    with torch.no_grad():
        predicted = checkpoint.model(**batch).all_logits.argmax(dim=-1)  # (L, N)
    expected = (predicted == labels[None, :]).T.long().tolist()
    assert expected == _read_vectors(sst2_labels / "train.tsv")


def test_labels_from_existing_checkpoint(sst2_labels, tmp_path):
    output = tmp_path / "again"
    result = invoke("build-difficulty-labels", "--checkpoint", sst2_labels / "multi-exit", "--label-limit", "20", "--test-fraction", "0.5", "-o", output)
    assert result.exit_code == 0, result.output
    assert not (output / "multi-exit").exists()
    assert len(_read_vectors(output / "train.tsv")) == 10
    assert json.loads((output / "labels_config.json").read_text())["checkpoint"] == str(sst2_labels / "multi-exit")


def test_snli_labels_then_probe(tiny_bert, elue_dir, tmp_path):
    """Pairs from SNLI dev: label them, then run the probe on the written files."""
    snli = elue_dir / "SNLI"
    output = tmp_path / "snli"
    result = invoke(
        "build-difficulty-labels", "--model", tiny_bert, "--task", "SNLI", "--train-file", snli / "dev.tsv",
        "--dev-file", snli / "test_full.tsv", "--label-limit", "80", *TRAIN_SMALL, "-o", output,
    )
    assert result.exit_code == 0, result.output
    train = pd.read_csv(output / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    assert list(train.columns) == ["sentence1", "sentence2", "label"]
    assert len(train) == 64

    result = invoke(
        "learnability-probe", "--difficulty", "model", "--data-dir", output, "--probes", "bow,bilstm", "--model", tiny_bert,
        "--seeds", "1,2", "--epochs", "1", "-o", tmp_path / "probe.csv",
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "probe.csv")
    assert set(rows["probe"]) == {"majority", "random", "random-expected", "bow", "bilstm"}
    assert set(rows["num_layers"]) == {4}
    assert set(rows["num_test"]) == {16}


def test_labels_for_regression_task(tiny_bert, elue_dir, tmp_path):
    result = invoke("build-difficulty-labels", "--model", tiny_bert, "--task", "STS-B", "--data-dir", elue_dir, *TRAIN_SMALL, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "STS-B is a regression task" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_labels_from_full_checkpoint(tiny_bert, elue_dir, tmp_path):
    full = tmp_path / "full"
    assert invoke("finetune", "--method", "full", "--model", tiny_bert, "--data-dir", elue_dir, *TRAIN_SMALL, "-o", full).exit_code == 0
    result = invoke("build-difficulty-labels", "--checkpoint", full, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "trained with --method full" in error_line(result)
    assert not (tmp_path / "out").exists()


def test_token_level_labels(tiny_bert, tmp_path):
    conll = tmp_path / "ner.conll"
    conll.write_text(CONLL_TEXT)
    output = tmp_path / "tokens"
    result = invoke(
        "build-difficulty-labels", "--token-level", "--model", tiny_bert, "--train-file", conll, "--dev-file", conll,
        "--label-split", "train", "--test-fraction", "0.4", "--epochs", "1", "-o", output,
    )
    assert result.exit_code == 0, result.output
    source = read_conll(conll)
    written = {split: read_conll(output / f"{split}.conll") for split in ("train", "test")}
    assert (len(written["train"]), len(written["test"])) == (3, 2)
    # Every sentence comes back whole, with its tokens and tags, and a 0/1 vector per token.
    original = {tuple(tokens): tags for tokens, tags in zip(source.tokens, source.tags)}
    for split in written.values():
        for tokens in split.tokens:
            assert tuple(tokens) in original
    lines = (output / "train.conll").read_text().split("\n")
    for line in lines:
        if line:
            token, tag, vector = line.split("\t")
            assert len(json.loads(vector)) == 4
            assert set(json.loads(vector)) <= {0, 1}
    config = json.loads((output / "labels_config.json").read_text())
    assert config["level"] == "token"
    assert config["task"]["labels"] == ["B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"]


def test_token_level_bad_line(tiny_bert, tmp_path):
    conll = tmp_path / "bad.conll"
    conll.write_text("Ada B-PER\nLovelace\n\n")
    result = invoke("build-difficulty-labels", "--token-level", "--model", tiny_bert, "--train-file", conll, "--dev-file", conll, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "bad.conll line 2: expected a token and a tag" in error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("difficulty", ["human", "model"])
def test_probe_on_shipped_snli(difficulty, tiny_bert, shared_data, tmp_path):
    output = tmp_path / "probe.csv"
    result = invoke(
        "learnability-probe", "--difficulty", difficulty, "--data-dir", shared_data / "difficulty", "--model", tiny_bert,
        *PROBE_SMALL, "-o", output,
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(output)
    metrics = ["accuracy", "f1"] if difficulty == "human" else ["instance_tpr", "instance_tnr", "instance_gmean"]
    for name in ("difficulty", "probe", "seed", *metrics):
        assert name in rows.columns
    assert len(rows) == 2 * 6
    assert set(rows["seed"]) == {1, 2}
    assert rows[metrics].notna().all().all()
    assert ((rows[metrics] >= 0) & (rows[metrics] <= 1)).all().all()
    assert set(rows["num_train"]) == {54}
    assert set(rows["num_test"]) == {40}
    # The table and the one-line verdict.
    assert "random-expected" in result.output
    assert "the random guess by more than two standard deviations" in result.output


def test_probe_json_output(shared_data, tmp_path):
    result = invoke(
        "--json", "learnability-probe", "--difficulty", "human", "--data-dir", shared_data / "difficulty", "--probes", "bow",
        "--seeds", "1,2,3", "-o", tmp_path / "probe.csv",
    )
    assert result.exit_code == 0, result.output
    # Strict JSON: a NaN would raise here.
    payload = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))
    assert payload["train_positive_rate"] == pytest.approx([619 / 1237])
    summary = {row["probe"]: row for row in payload["summary"]}
    assert summary["bow"]["seeds"] == 3
    assert summary["bow"]["beats_random_by_2_std"] in (True, False)
    assert "bow" in payload["summary_line"]


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (["[1, 0, 1]", "[0, 1, 1]"], ["--layers", "12"], "train.txt line 2: the label vector has 3 entries, but the multi-exit model has 12 layers"),
        (["[1, 0, 1]", "[0, 3, 1]"], [], "train.txt line 3: entry 2 of the label vector [0, 3, 1] is '3', not 0 or 1"),
        (["[1, 1, 1]", "[1, 1, 1]"], [], "train.txt: every entry of every label vector is 1"),
        ([], [], "train.txt has no examples"),
    ],
)
def test_probe_bad_input(rows, options, message, tmp_path):
    write_tsv(tmp_path / "train.txt", ["sentence1", "sentence2", "label"], [["a man", "a person", row] for row in rows])
    write_tsv(tmp_path / "test.txt", ["sentence1", "sentence2", "label"], [["a dog", "an animal", "[1, 0, 0]"], ["a cat", "a car", "[0, 1, 1]"]])
    output = tmp_path / "probe.csv"
    result = invoke("learnability-probe", "--difficulty", "model", "--data-dir", tmp_path, "--probes", "bow", *options, "-o", output)
    assert result.exit_code == 1
    assert message in error_line(result)
    assert not output.exists()


def test_probe_keeps_existing_output(shared_data, tmp_path):
    output = tmp_path / "probe.csv"
    output.write_text("mine\n")
    result = invoke("learnability-probe", "--difficulty", "human", "--data-dir", shared_data / "difficulty", "-o", output)
    assert result.exit_code == 1
    assert "already exists" in error_line(result)
    assert output.read_text() == "mine\n"


def test_probe_unknown_name(shared_data, tmp_path):
    result = invoke("learnability-probe", "--difficulty", "human", "--data-dir", shared_data / "difficulty", "--probes", "bow,lstm", "-o", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert "did you mean bilstm" in error_line(result)
