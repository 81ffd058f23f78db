"""Summarisation data and ROUGE: hand-checked scores, several references, truncation and bad input."""

from __future__ import annotations

import json

import pytest

from conftest import write_tsv
from hashee_cli.data.reading import DataConfig
from hashee_cli.data.tasks import get_task
from hashee_cli.errors import DataError, HasheeError
from hashee_cli.seq2seq.data import collate_summaries, encode_summaries, load_summaries
from hashee_cli.seq2seq.model import IGNORE_INDEX
from hashee_cli.seq2seq.rouge import rouge, rouge_per_example

DIALOGSUM = get_task("DialogSum")


def test_rouge_by_hand():
    # Prediction and reference share 5 of 6 unigrams (the, the, cat, on, mat), 3 of 5 bigrams
    # (the cat, on the, the mat) and a longest common subsequence of 5 (the cat on the mat).
    scores = rouge(["the cat sat on the mat"], [["the cat was on the mat"]])
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)


def test_rouge_takes_best_reference_and_averages_examples():
    per_example = rouge_per_example(
        ["the cat sat on the mat", "a dog"],
        [["completely different words", "the cat sat on the mat"], ["a cat"]],
    )
    assert per_example["rouge1"].tolist() == pytest.approx([1.0, 0.5])
    # Unequal lengths: "a dog" against "a cat and" has precision 1/2 and recall 1/3.
    assert rouge(["a dog"], [["a cat and"]])["rouge1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert rouge(["the cat sat on the mat", "a dog"], [["the cat sat on the mat"], ["a cat"]])["rouge1"] == pytest.approx(0.75)


def test_rouge_needs_a_reference_per_prediction():
    with pytest.raises(HasheeError, match="2 predictions but 1"):
        rouge(["a", "b"], [["a"]])


def test_dialogsum_test_split_has_three_references(shared_data):
    data = DataConfig(task="DialogSum", data_dir=str(shared_data / "summarization"))
    split = load_summaries(data, DIALOGSUM, "test")
    assert split.source.endswith("test_allrefs.tsv")
    assert split.reference_columns == ("summary", "summary2", "summary3")
    assert len(split) == 500
    assert all(len(references) == 3 for references in split.references)
    assert split.documents[0].startswith("#Person1#:")


def _config(tmp_path, name: str, header: list[str], rows: list[list[str]]) -> DataConfig:
    path = write_tsv(tmp_path / name, header, rows)
    return DataConfig(task="DialogSum", train_file=str(path), dev_file=str(path), test_file=str(path))


def test_empty_document_names_the_line(tmp_path):
    data = _config(tmp_path, "train.tsv", ["document", "summary"], [["#Person1#: Hi.", "They greet."], ["  ", "Nothing."]])
    with pytest.raises(DataError, match=r"train.tsv line 3: the document is empty"):
        load_summaries(data, DIALOGSUM, "train")


def test_empty_summary_names_the_line(tmp_path):
    data = _config(tmp_path, "train.tsv", ["document", "summary"], [["#Person1#: Hi.", ""], ["#Person1#: Bye.", "Bye."]])
    with pytest.raises(DataError, match=r"train.tsv line 2: the summary \(column 'summary'\) is empty"):
        load_summaries(data, DIALOGSUM, "train")


def test_empty_extra_reference_is_left_out_of_scoring(tmp_path):
    data = _config(
        tmp_path, "test.tsv", ["document", "summary", "summary2"], [["#Person1#: Hi.", "They greet.", ""]]
    )
    split = load_summaries(data, DIALOGSUM, "test")
    assert split.references == [["They greet.", ""]]
    assert split.scored_references() == [["They greet."]]


def test_missing_summary_column(tmp_path):
    data = _config(tmp_path, "test.tsv", ["document"], [["#Person1#: Hi."]])
    split = load_summaries(data, DIALOGSUM, "test", require_summaries=False)
    assert split.references is None
    assert split.documents == ["#Person1#: Hi."]
    with pytest.raises(DataError, match="no summary column"):
        load_summaries(data, DIALOGSUM, "test")


def test_long_documents_are_truncated_and_counted(tmp_path, minilm_tokenizer):
    long_document = " ".join(["word"] * 600)
    data = _config(
        tmp_path, "train.tsv", ["document", "summary"],
        [[long_document, "A long one."], ["#Person1#: Hi.", " ".join(["summary"] * 50)], ["Short.", "Short."]],
    )
    split = load_summaries(data, DIALOGSUM, "train")
    encoded = encode_summaries(split, minilm_tokenizer, 32, 8, minilm_tokenizer.cls_token_id)
    assert encoded.num_truncated_documents == 1
    assert encoded.num_truncated_summaries == 1
    assert len(encoded.input_ids[0]) == 32
    # Truncation keeps the closing [SEP] of documents and summaries.
    assert encoded.input_ids[0][-1] == minilm_tokenizer.sep_token_id
    assert len(encoded.labels[1]) == 8
    assert encoded.labels[1][-1] == minilm_tokenizer.sep_token_id


def test_bert_labels_drop_the_start_token_and_shift(tmp_path, minilm_tokenizer):
    data = _config(tmp_path, "train.tsv", ["document", "summary"], [["Hello there.", "They greet."], ["Bye.", "Bye."]])
    encoded = encode_summaries(load_summaries(data, DIALOGSUM, "train"), minilm_tokenizer, 32, 16, minilm_tokenizer.cls_token_id)
    cls, sep = minilm_tokenizer.cls_token_id, minilm_tokenizer.sep_token_id
    assert encoded.labels[0] == minilm_tokenizer("They greet.")["input_ids"][1:]
    batch = collate_summaries(encoded, [0, 1], minilm_tokenizer.pad_token_id, cls)
    assert batch["decoder_input_ids"][0].tolist()[:2] == [cls, encoded.labels[0][0]]
    assert batch["labels"][1].tolist() == [*encoded.labels[1], *[IGNORE_INDEX] * (len(encoded.labels[0]) - len(encoded.labels[1]))]
    assert batch["labels"][0, -1].item() == sep
    assert batch["decoder_attention_mask"].sum(dim=1).tolist() == [len(encoded.labels[0]), len(encoded.labels[1])]


def test_summarization_task_reads_hub_style_columns(tmp_path):
    path = tmp_path / "samsum.jsonl"
    records = [{"id": "1", "dialogue": "Amanda: Hi.", "summary": "Amanda greets."}]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n", encoding="utf-8")
    data = DataConfig(task="summarization", train_file=str(path))
    split = load_summaries(data, data.task_spec(), "train")
    assert split.documents == ["Amanda: Hi."]
    assert split.references == [["Amanda greets."]]


def test_custom_columns_with_problem_type_summarization(tmp_path):
    path = write_tsv(tmp_path / "news.tsv", ["body", "headline"], [["Markets rose today.", "Markets up."]])
    data = DataConfig(task="news", train_file=str(path), text_columns=["body"], label_column="headline", problem_type="summarization")
    task = data.task_spec()
    assert task.problem_type == "summarization"
    assert task.main_metric == "rougeL"
    assert load_summaries(data, task, "train").references == [["Markets up."]]
