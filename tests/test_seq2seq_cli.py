"""Summarisation from the command line: build-hash, finetune, evaluate and report on DialogSum with a tiny bert2bert."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from conftest import error_line, invoke, write_tsv

LENGTHS = ["--max-seq-length", "64", "--max-target-length", "12"]
TRAINING = ["--epochs", "1", "--batch-size", "8", "--eval-batch-size", "8", "--learning-rate", "1e-3", *LENGTHS]


@pytest.fixture(scope="module")
def data_dir(shared_data, tmp_path_factory):
    """A DialogSum folder with the first 40 training, 8 dev and 8 multi-reference test dialogues of the real data."""
    source = shared_data / "summarization" / "DialogSum"
    target = tmp_path_factory.mktemp("summarization") / "DialogSum"
    target.mkdir()
    for name, rows in (("train.tsv", 40), ("dev.tsv", 8), ("test_allrefs.tsv", 8)):
        lines = (source / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (target / name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return target.parent


@pytest.fixture(scope="module")
def table_path(tiny_bert, data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "dialogsum.json"
    # Tokens unseen in training exit after layer 1, so the untrained decoder's rare tokens exit early too.
    result = invoke(
        "build-hash", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--exit-layers", "1,2,4",
        "--default-exit-layer", "1", *LENGTHS, "-o", path,
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def runs(tiny_bert, data_dir, table_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for name, method in (("full", ["--method", "full"]), ("hashee", ["--hash-table", table_path])):
        result = invoke("finetune", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, *method, *TRAINING, "-o", folder / name)
        assert result.exit_code == 0, result.output
    return folder


def test_build_hash_counts_documents_and_summaries(table_path):
    table = json.loads(table_path.read_text())
    assert table["data"]["counted"] == "documents and summaries"
    assert table["data"]["num_examples"] == 40
    assert table["data"]["max_target_length"] == 12
    assert table["exit_layers"] == [1, 2, 4]
    assert table["stats"]["mean_exit_layer"] < 2.5


def test_build_hash_rejects_label_based_methods(tiny_bert, data_dir, tmp_path):
    result = invoke("build-hash", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--method", "mi", "-o", tmp_path / "mi.json")
    assert result.exit_code == 1
    assert "needs class labels" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_finetune_writes_seq2seq_checkpoint(runs):
    from transformers import AutoModelForSeq2SeqLM

    settings = json.loads((runs / "hashee" / "hashee_config.json").read_text())
    assert settings["architecture"] == "bert2bert"
    assert settings["task"]["problem_type"] == "summarization"
    assert settings["data"]["max_target_length"] == 12
    epochs = pd.read_csv(runs / "hashee" / "epoch_metrics.csv")
    assert {"dev_rouge1", "dev_rougeL", "dev_mean_exit_layer_decoder"} <= set(epochs.columns)
    model = AutoModelForSeq2SeqLM.from_pretrained(runs / "hashee")
    assert model.config.decoder_start_token_id == 101


def test_evaluate_scores_generations_against_three_references(runs, tmp_path):
    metrics = tmp_path / "metrics.csv"
    for name in ("full", "hashee"):
        predictions = tmp_path / f"{name}.tsv"
        result = invoke("evaluate", runs / name, "--split", "test", "-o", metrics, "--predictions", predictions, "--batch-size", "4")
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(predictions, sep="\t", quoting=3, keep_default_na=False)
        assert list(frame.columns[:5]) == ["line", "generated", "summary", "summary2", "summary3"]
        assert {"document", "rougeL", "mean_exit_layer_decoder", "macs"} <= set(frame.columns)
        assert len(frame) == 8
    rows = pd.read_csv(metrics).set_index("method")
    assert rows.loc["hashee", "references"] == "summary summary2 summary3"
    for column in ("rouge1", "rouge2", "rougeL", "macs_per_generated_token", "tokens_per_second"):
        assert rows[column].notna().all(), column
    assert rows.loc["full", "mean_exit_layer_encoder"] == 4.0
    assert rows.loc["hashee", "mean_exit_layer_encoder"] < 2.5
    assert rows.loc["hashee", "mean_exit_layer_decoder"] < 4.0
    assert rows.loc["hashee", "encoder_macs_per_example"] < rows.loc["full", "encoder_macs_per_example"]

    result = invoke("report", metrics, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("method")
    assert {"rouge1", "rouge2", "rougeL", "mean_exit_layer_decoder", "macs_per_generated_token"} <= set(table.columns)
    assert table.loc["full", "macs_ratio_to_full"] == 1.0
    assert table.loc["hashee", "delta_vs_full"] == pytest.approx(100 * (rows.loc["hashee", "rougeL"] - rows.loc["full", "rougeL"]))


def test_evaluate_beam_search(runs, tmp_path):
    metrics = tmp_path / "metrics.csv"
    result = invoke("evaluate", runs / "hashee", "--split", "dev", "-o", metrics, "--num-beams", "3", "--max-new-tokens", "6", "--limit", "4")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(metrics).iloc[0]
    assert row["num_beams"] == 3
    assert row["generated_tokens_per_example"] <= 6


def test_evaluate_without_summaries_only_generates(runs, tmp_path):
    test_file = write_tsv(tmp_path / "unlabelled.tsv", ["document"], [["#Person1#: Hello, how are you? #Person2#: Fine."]] * 3)
    metrics, predictions = tmp_path / "metrics.csv", tmp_path / "generated.tsv"
    result = invoke("evaluate", runs / "hashee", "--test-file", test_file, "-o", metrics, "--predictions", predictions)
    assert result.exit_code == 0, result.output
    assert "No ROUGE computed" in result.output
    row = pd.read_csv(metrics, keep_default_na=False).iloc[0]
    assert "rougeL" not in row.index
    assert row["references"] == ""
    assert len(pd.read_csv(predictions, sep="\t")["generated"]) == 3


def test_evaluate_truncates_and_counts_long_documents(runs, tmp_path):
    long_document = "#Person1#: " + " ".join(["hello"] * 2000)
    test_file = write_tsv(tmp_path / "long.tsv", ["document", "summary"], [[long_document, "A long greeting."], ["#Person1#: Hi.", "A greeting."]])
    metrics = tmp_path / "metrics.csv"
    result = invoke("evaluate", runs / "full", "--test-file", test_file, "-o", metrics)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(metrics).iloc[0]["num_truncated"] == 1


def test_generation_options_rejected_for_classifiers(tiny_bert, shared_data, tmp_path):
    result = invoke(
        "finetune", "--model", tiny_bert, "--data-dir", shared_data / "elue", "--method", "full", "--train-limit", "16",
        "--dev-limit", "8", "--epochs", "1", "-o", tmp_path / "classifier",
    )
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tmp_path / "classifier", "--num-beams", "4", "-o", tmp_path / "metrics.csv")
    assert result.exit_code == 1
    assert "--num-beams applies to summarisation checkpoints only" in error_line(result)
    assert not (tmp_path / "metrics.csv").exists()


def test_max_seq_length_beyond_positions_rejected(tiny_bert, data_dir, tmp_path):
    # The tiny model has 128 positions while its tokenizer allows 512.
    result = invoke(
        "finetune", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--method", "full",
        "--max-seq-length", "256", "-o", tmp_path / "run",
    )
    assert result.exit_code == 1
    assert "--max-seq-length 256 exceeds the encoder's 128 positions" in error_line(result)
    assert not (tmp_path / "run").exists()


def test_empty_document_stops_finetune(tiny_bert, data_dir, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", ["document", "summary"], [["#Person1#: Hi.", "They greet."], ["", "Nothing."]])
    result = invoke(
        "finetune", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--train-file", train,
        "--method", "full", *TRAINING, "-o", tmp_path / "run",
    )
    assert result.exit_code == 1
    assert f"{train} line 3: the document is empty" in error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def other_tokenizer_model(tmp_path_factory):
    """A tiny BERT with its own 40-word vocabulary."""
    directory = tmp_path_factory.mktemp("other-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "#", "person", "##1", "##2", ":", ".", ",", "hi", "the", "a", "is"]
    words += [f"word{index}" for index in range(40 - len(words))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hash_table_from_another_tokenizer_rejected(other_tokenizer_model, tiny_bert, data_dir, tmp_path):
    table = tmp_path / "other.json"
    result = invoke("build-hash", "--task", "DialogSum", "--model", other_tokenizer_model, "--data-dir", data_dir, *LENGTHS, "-o", table)
    assert result.exit_code == 0, result.output
    result = invoke(
        "finetune", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--hash-table", table, *TRAINING,
        "-o", tmp_path / "run",
    )
    assert result.exit_code == 1
    assert "was built for another tokenizer" in error_line(result)
    assert not (tmp_path / "run").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.json"]


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_pretrained_encoder_decoder_directories(family, minilm_tokenizer, data_dir, tmp_path):
    """A local BART or T5 directory takes the path of hub checkpoints such as facebook/bart-base."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    ids = dict(pad_token_id=0, eos_token_id=102, decoder_start_token_id=101)
    if family == "bart":
        config = BartConfig(
            vocab_size=len(minilm_tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, **ids,
        )
        model = BartForConditionalGeneration(config)
    else:
        config = T5Config(vocab_size=len(minilm_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, **ids)
        model = T5ForConditionalGeneration(config)
    model.save_pretrained(tmp_path / family)
    minilm_tokenizer.save_pretrained(tmp_path / family)

    table = tmp_path / "hash.json"
    result = invoke("build-hash", "--task", "DialogSum", "--model", tmp_path / family, "--data-dir", data_dir, *LENGTHS, "-o", table)
    assert result.exit_code == 0, result.output
    assert json.loads(table.read_text())["num_layers"] == 2
    result = invoke(
        "finetune", "--task", "DialogSum", "--model", tmp_path / family, "--data-dir", data_dir, "--hash-table", table,
        *TRAINING, "--train-limit", "16", "--dev-limit", "4", "-o", tmp_path / "run",
    )
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tmp_path / "run", "--limit", "4", "--num-beams", "2", "-o", tmp_path / "metrics.csv")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "metrics.csv").iloc[0]
    assert row["num_layers"] == 2
    assert row["mean_exit_layer_encoder"] < 2.0
    assert json.loads((tmp_path / "run" / "hashee_config.json").read_text())["architecture"] == family


def test_empty_summary_stops_evaluate(runs, tmp_path):
    test_file = write_tsv(tmp_path / "test.tsv", ["document", "summary"], [["#Person1#: Hi.", "They greet."], ["#Person1#: Bye.", " "]])
    metrics, predictions = tmp_path / "metrics.csv", tmp_path / "generated.tsv"
    result = invoke("evaluate", runs / "hashee", "--test-file", test_file, "-o", metrics, "--predictions", predictions)
    assert result.exit_code == 1
    assert f"{test_file} line 3" in error_line(result)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["test.tsv"]


def test_summarization_finetune_rejects_resume(tiny_bert, data_dir, tmp_path):
    result = invoke(
        "finetune", "--task", "DialogSum", "--model", tiny_bert, "--data-dir", data_dir, "--method", "full", *TRAINING,
        "--resume", "-o", tmp_path / "run",
    )
    assert result.exit_code == 1
    assert "keeps no resumable checkpoints" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_count_flops_of_generation(runs, tmp_path):
    flops = tmp_path / "flops.csv"
    for name in ("full", "hashee"):
        examples = tmp_path / f"examples-{name}.tsv"
        result = invoke("count-flops", runs / name, "--split", "test", "--limit", "3", "-o", flops, "--examples", examples)
        assert result.exit_code == 0, result.output
        assert "decoder per generated token" in result.output
    rows = pd.read_csv(flops).set_index("run")
    assert list(rows["flops_unit"]) == ["MACs", "MACs"]
    assert list(rows["num_examples"]) == [3, 3]
    # Without LayerNorm, fvcore's products are what the analytic model counts, for both stacks.
    assert rows["counted_vs_analytic"].abs().max() < 1e-9
    full, hashee = rows.loc["full"], rows.loc["hashee"]
    assert full["counted_ratio_to_full"] == pytest.approx(1.0)
    assert hashee["counted_encoder_flops_mean"] < full["counted_encoder_flops_mean"]
    assert hashee["counted_ratio_to_full"] < 1.0
    per_example = pd.read_csv(examples, sep="\t")
    assert (per_example["counted_flops"] == per_example["counted_encoder_flops"] + per_example["counted_decoder_flops"]).all()
    assert hashee["counted_flops_per_generated_token"] == pytest.approx(
        per_example["counted_decoder_flops"].sum() / per_example["generated_tokens"].sum()
    )

    # The same count in FLOPs doubles every figure.
    result = invoke("count-flops", runs / "hashee", "--split", "test", "--limit", "3", "--unit", "flops", "-o", tmp_path / "doubled.csv")
    assert result.exit_code == 0, result.output
    doubled = pd.read_csv(tmp_path / "doubled.csv").iloc[0]
    assert doubled["flops_unit"] == "FLOPs"
    assert doubled["counted_flops_per_generated_token"] == pytest.approx(2 * hashee["counted_flops_per_generated_token"])

    metrics = tmp_path / "metrics.csv"
    result = invoke("evaluate", runs / "hashee", "--split", "test", "--limit", "3", "-o", metrics)
    assert result.exit_code == 0, result.output
    result = invoke("report", metrics, flops, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "report" / "comparison.csv").iloc[0]
    assert table["counted_flops_per_example"] == pytest.approx(hashee["counted_flops_mean"])


def test_count_flops_rejects_form_and_bare_summarization(runs, data_dir, tmp_path):
    result = invoke("count-flops", runs / "hashee", "--form", "masked", "-o", tmp_path / "flops.csv")
    assert result.exit_code == 1
    assert "does not apply to summarisation checkpoints" in error_line(result)
    result = invoke("count-flops", "--task", "DialogSum", "--data-dir", data_dir, "--method", "full", "-o", tmp_path / "flops.csv")
    assert result.exit_code == 1
    assert "counts summarisation on a checkpoint" in error_line(result)
    assert list(tmp_path.iterdir()) == []
