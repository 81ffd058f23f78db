"""The HashEE forward: agreement with transformers, masked vs gathered, batch independence."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hashee_cli.data.reading import DataConfig, load_split
from hashee_cli.data.tasks import get_task
from hashee_cli.hashing.build import HashSettings, build_hash_table
from hashee_cli.checkpoint import build_assigner
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task

ARCHITECTURES = ["bert", "roberta", "electra", "distilbert"]
SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "bad",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes that not only would subtlety be lost on the target audience , but that it 's also too stupid to realize that they 've already seen this exact same movie a hundred times",
    "it 's a charming and often affecting journey .",
]


def _classifier(model_dir, num_labels=3, problem_type=None):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels, problem_type=problem_type)
    return model.eval()


def _random_exits(attention_mask: torch.Tensor, num_layers: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    layers = torch.randint(1, num_layers + 1, attention_mask.shape, generator=generator)
    return layers * attention_mask


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_all_tokens_at_last_layer_match_transformers(model_type, tiny_model_dir, minilm_tokenizer):
    hf_model = _classifier(tiny_model_dir(model_type))
    model = HashEEModel(hf_model)
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt", return_token_type_ids=model_type != "distilbert")
    with torch.no_grad():
        expected = hf_model(**batch).logits
        last = batch["attention_mask"] * model.num_layers
        for form in ("dense", "masked", "gathered"):
            actual = model(**batch, exit_layers=last, form=form).logits
            torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_masked_and_gathered_agree(model_type, tiny_model_dir, minilm_tokenizer):
    model = HashEEModel(_classifier(tiny_model_dir(model_type)))
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt", return_token_type_ids=model_type != "distilbert")
    inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    valid = batch["attention_mask"].bool()
    for seed in range(3):
        exits = _random_exits(batch["attention_mask"], model.num_layers, seed)
        with torch.no_grad():
            masked = model.encode(*inputs, exits, form="masked")
            gathered = model.encode(*inputs, exits, form="gathered")
            dense = model.encode(*inputs, exits, form="dense")
            masked_logits = model(**batch, exit_layers=exits, form="masked").logits
            gathered_logits = model(**batch, exit_layers=exits, form="gathered").logits
        # Hidden states are LayerNorm outputs of order 1, so 1e-4 is a strict bound on them.
        torch.testing.assert_close(gathered[valid], masked[valid], atol=1e-4, rtol=0)
        torch.testing.assert_close(gathered_logits, masked_logits, atol=1e-4, rtol=0)
        # Exits must change the states, or the comparison above proves nothing.
        assert (masked[valid] - dense[valid]).abs().max() > 0.01


def test_gathered_handles_fully_exited_examples(tiny_model_dir, minilm_tokenizer):
    """Examples whose tokens have all exited drop out of later layers without changing results."""
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    exits = _random_exits(batch["attention_mask"], model.num_layers)
    exits[1] = batch["attention_mask"][1] * 1  # every token of example 1 leaves after layer 1
    with torch.no_grad():
        masked = model(**batch, exit_layers=exits, form="masked").logits
        gathered = model(**batch, exit_layers=exits, form="gathered").logits
    torch.testing.assert_close(gathered, masked, atol=1e-4, rtol=0)


def test_gathered_when_longest_example_exits_first(tiny_model_dir, minilm_tokenizer):
    """Later layers read keys only up to the longest example still running; results must not change."""
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    exits = _random_exits(batch["attention_mask"], model.num_layers, seed=1)
    longest = int(batch["attention_mask"].sum(dim=1).argmax())
    exits[longest] = batch["attention_mask"][longest]  # the longest example leaves after layer 1
    with torch.no_grad():
        masked = model(**batch, exit_layers=exits, form="masked").logits
        gathered = model(**batch, exit_layers=exits, form="gathered").logits
    torch.testing.assert_close(gathered, masked, atol=1e-4, rtol=0)


def test_gathered_with_left_padding(tiny_model_dir, minilm_tokenizer):
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    minilm_tokenizer.padding_side = "left"
    try:
        batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    finally:
        minilm_tokenizer.padding_side = "right"
    assert (batch["attention_mask"][:, 0] == 0).any()
    exits = _random_exits(batch["attention_mask"], model.num_layers, seed=2)
    with torch.no_grad():
        masked = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], exits, form="masked")
        gathered = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], exits, form="gathered")
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(gathered[valid], masked[valid], atol=1e-4, rtol=0)


def test_exit_layers_add_no_parameters(tiny_model_dir):
    hf_model = _classifier(tiny_model_dir("bert"))
    model = HashEEModel(hf_model)
    assert len(model.layers) == model.num_layers
    assert [name.removeprefix("model.") for name in model.state_dict()] == list(hf_model.state_dict())
    assert sum(1 for _ in model.parameters()) == sum(1 for _ in hf_model.parameters())


@pytest.mark.parametrize("form", ["masked", "gathered"])
def test_prediction_independent_of_batch(form, tiny_model_dir, minilm_tokenizer, elue_dir):
    model_dir = tiny_model_dir("bert")
    hf_model = _classifier(model_dir)
    table = build_hash_table(str(model_dir), DataConfig(task="SST-2", data_dir=str(elue_dir)), HashSettings(method="freq"))
    model = HashEEModel(hf_model, build_assigner(table, minilm_tokenizer, hf_model.config.vocab_size)).eval()

    alone = minilm_tokenizer(SENTENCES[1:2], return_tensors="pt")
    padded = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        single = model(**alone, form=form).logits[0]
        in_batch = model(**padded, form=form).logits[1]
    assert padded["attention_mask"][1].sum() < padded["attention_mask"].shape[1]
    torch.testing.assert_close(in_batch, single, atol=1e-4, rtol=0)


def test_regression_head_returns_one_value_per_example(tiny_model_dir, minilm_tokenizer):
    hf_model = _classifier(tiny_model_dir("bert"), num_labels=1, problem_type="regression")
    model = HashEEModel(hf_model)
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    targets = torch.tensor([4.0, 1.0, 0.5, 3.0])
    output = model(**batch, labels=targets)
    assert output.logits.shape == (4,)
    expected = torch.nn.functional.mse_loss(output.logits, targets)
    torch.testing.assert_close(output.loss, expected)


def test_special_tokens_exit_at_last_layer(elue_dir, minilm_tokenizer):
    data = DataConfig(task="SST-2", data_dir=str(elue_dir))
    table = build_hash_table("minilm-l6", data, HashSettings(method="freq"))
    assigner = build_assigner(table, minilm_tokenizer, 30522)
    batch = minilm_tokenizer(["the movie .", "a movie"], ["is fine", "works"], padding=True, return_tensors="pt")
    exits = assigner(batch["input_ids"], batch["attention_mask"])
    special = torch.isin(batch["input_ids"], torch.tensor(minilm_tokenizer.all_special_ids)) & batch["attention_mask"].bool()
    assert (exits[special] == 6).all()
    assert (exits[~special & batch["attention_mask"].bool()] < 6).any()


def test_num_layers_keeps_first_layers():
    task = get_task("SST-2")
    full = load_backbone_for_task("minilm-l6", task)
    truncated = load_backbone_for_task("minilm-l6", task, num_layers=2)
    assert truncated.config.num_hidden_layers == 2
    assert len(truncated.bert.encoder.layer) == 2
    torch.testing.assert_close(
        truncated.bert.encoder.layer[1].output.dense.weight, full.bert.encoder.layer[1].output.dense.weight
    )
    with pytest.raises(Exception, match="between 1 and 6"):
        load_backbone_for_task("minilm-l6", task, num_layers=7)


def test_real_backbone_masked_gathered_on_sst2(elue_dir, minilm_tokenizer):
    """The packaged MiniLM with a frequency hash: both forms agree on a real SST-2 batch."""
    data = DataConfig(task="SST-2", data_dir=str(elue_dir))
    task = get_task("SST-2")
    table = build_hash_table("minilm-l6", data, HashSettings(method="freq"))
    hf_model = load_backbone_for_task("minilm-l6", task).eval()
    model = HashEEModel(hf_model, build_assigner(table, minilm_tokenizer, hf_model.config.vocab_size)).eval()

    dev = load_split(data, task, "dev")
    batch = minilm_tokenizer(dev.texts[0][:32], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        masked = model(**batch, form="masked")
        gathered = model(**batch, form="gathered")
    torch.testing.assert_close(gathered.logits, masked.logits, atol=1e-4, rtol=0)
    valid = batch["attention_mask"].bool()
    assert masked.exit_layers[valid].float().mean() < 3.0


def test_gradients_flow_in_masked_form(tiny_model_dir, minilm_tokenizer):
    model = HashEEModel(_classifier(tiny_model_dir("bert"), num_labels=2)).train()
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    exits = _random_exits(batch["attention_mask"], model.num_layers)
    exits[:, 0] = model.num_layers  # [CLS] feeds the head, so it runs every layer
    output = model(**batch, exit_layers=exits, labels=torch.tensor([1, 0, 0, 1]), form="masked")
    output.loss.backward()
    last_ffn = model.model.bert.encoder.layer[-1].output.dense.weight
    assert last_ffn.grad is not None
    assert last_ffn.grad.abs().sum() > 0
