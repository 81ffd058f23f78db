"""fvcore counts of the real forward pass: agreement with the cost model, trends, and no side effects."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hashee_cli.checkpoint import build_assigner
from hashee_cli.data.encoding import EncodedSplit, encode_split
from hashee_cli.data.reading import Split
from hashee_cli.data.tasks import get_task
from hashee_cli.errors import HasheeError
from hashee_cli.flop_counting import CountingTarget, count_split, model_target
from hashee_cli.flops import EncoderDims
from hashee_cli.hashing.table import HashTable
from hashee_cli.modeling.model import HashEEModel
from hashee_cli.modeling.multi_exit import MultiExitModel

ARCHITECTURES = ["bert", "roberta", "electra", "distilbert"]
SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "bad",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes that not only "
    "would subtlety be lost on the target audience , but that it 's also too stupid to realize it",
    "it 's a charming and often affecting journey .",
]
TASK = get_task("SST-2")


def _split(texts: list[str], source: str = "sentences.tsv") -> Split:
    return Split("test", source, [texts], None, list(range(2, len(texts) + 2)))


def _encoded(tokenizer, texts: list[str] = SENTENCES, max_seq_length: int = 128):
    return encode_split(_split(texts), TASK, tokenizer, max_seq_length)


def _classifier(model_dir):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()


def _table(num_layers: int, exit_layers: list[int], vocab_size: int) -> HashTable:
    """Return a table that spreads token ids over the buckets by id (one bucket: every token exits there)."""
    buckets = [token_id % len(exit_layers) for token_id in range(vocab_size)]
    return HashTable("test", num_layers, exit_layers, exit_layers[-1], {"vocab_size": vocab_size}, buckets)


def _hashee(model_dir, tokenizer, exit_layers: list[int]) -> HashEEModel:
    hf_model = _classifier(model_dir)
    table = _table(hf_model.config.num_hidden_layers, exit_layers, len(tokenizer))
    return HashEEModel(hf_model, build_assigner(table, tokenizer, hf_model.config.vocab_size)).eval()


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_fvcore_matches_analytic_per_example_and_layer(model_type, tiny_model_dir, minilm_tokenizer):
    model_dir = tiny_model_dir(model_type)
    encoded = _encoded(minilm_tokenizer)
    models = {
        "full": HashEEModel(_classifier(model_dir)),
        "hashee": _hashee(model_dir, minilm_tokenizer, [1, 2, 3, 4]),
        "multi-exit": MultiExitModel(_classifier(model_dir)),
    }
    for name, model in models.items():
        counts = count_split(model_target(model), encoded, minilm_tokenizer.pad_token_id, batch_size=2)
        assert counts.counted.min() > 0, name
        relative = abs(counts.counted / counts.analytic - 1)
        assert relative.max() < 0.05, (name, relative)
        layer_relative = abs(counts.counted_layers / counts.analytic_layers - 1)
        assert layer_relative.max() < 0.05, (name, layer_relative)
        assert not counts.uncounted_ops, (name, counts.uncounted_ops)


def test_attention_products_are_counted(tiny_model_dir, minilm_tokenizer):
    """Q K^T and the weighted sum of values cost 2 * n^2 * d per layer, summed over heads."""
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    encoded = _encoded(minilm_tokenizer, SENTENCES[:1])
    counts = count_split(model_target(model), encoded, minilm_tokenizer.pad_token_id)
    dims = EncoderDims.from_config(model.config)
    num_tokens = encoded.lengths[0]
    expected = dims.num_layers * 2 * num_tokens**2 * dims.hidden_size
    assert counts.by_operator["scaled_dot_product_attention"] == expected


def test_uncounted_operator_is_listed(tiny_model_dir, minilm_tokenizer):
    """An operator without a handler shows up in uncounted_ops instead of vanishing."""
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    target = model_target(model)

    def forward(batch):
        logits, exit_layers = target.forward(batch)
        outer = logits[:, :, None] * logits[:, None, :]  # (B, C, C)
        return torch.baddbmm(outer, logits[:, :, None], logits[:, None, :]).sum(dim=-1), exit_layers

    extended = CountingTarget(model, forward, target.analytic_layers, target.analytic_other, target.layer_modules, target.form)
    counts = count_split(extended, _encoded(minilm_tokenizer, SENTENCES[:2]), minilm_tokenizer.pad_token_id)
    assert counts.uncounted_ops == {"aten::baddbmm": 2}


def test_cost_grows_with_sequence_length(tiny_model_dir, minilm_tokenizer):
    texts = [" ".join(["fine"] * words) for words in (1, 4, 16, 64)]
    encoded = _encoded(minilm_tokenizer, texts)
    model_dir = tiny_model_dir("bert")
    for model in (HashEEModel(_classifier(model_dir)), _hashee(model_dir, minilm_tokenizer, [1, 2, 3, 4])):
        counted = count_split(model_target(model), encoded, minilm_tokenizer.pad_token_id).counted
        assert all(shorter < longer for shorter, longer in zip(counted, counted[1:])), counted


def test_cost_falls_as_tokens_exit_earlier(tiny_model_dir, minilm_tokenizer):
    encoded = _encoded(minilm_tokenizer)
    model_dir = tiny_model_dir("bert")
    means = []
    for exit_layer in (4, 3, 2, 1):
        model = _hashee(model_dir, minilm_tokenizer, [exit_layer])
        counts = count_split(model_target(model), encoded, minilm_tokenizer.pad_token_id)
        means.append(counts.counted.mean())
        # Layers after the exit layer only run the special tokens that feed the head.
        assert (counts.counted_layers[:, exit_layer:] < counts.counted_layers[:, :1]).all()
    assert all(later > earlier for later, earlier in zip(means, means[1:])), means


def test_last_layer_hash_costs_full_model(tiny_model_dir, minilm_tokenizer):
    encoded = _encoded(minilm_tokenizer)
    model_dir = tiny_model_dir("bert")
    full = count_split(model_target(HashEEModel(_classifier(model_dir))), encoded, 0).counted
    last = count_split(model_target(_hashee(model_dir, minilm_tokenizer, [4])), encoded, 0).counted
    assert abs(last / full - 1).max() < 0.02


def test_masked_form_costs_the_full_model(tiny_model_dir, minilm_tokenizer):
    """The masked form runs every token through every layer, so it saves nothing."""
    encoded = _encoded(minilm_tokenizer)
    model = _hashee(tiny_model_dir("bert"), minilm_tokenizer, [1, 2, 3, 4])
    masked = count_split(model_target(model, "masked"), encoded, 0)
    gathered = count_split(model_target(model, "gathered"), encoded, 0)
    assert masked.counted == pytest.approx(masked.full_model)
    assert (gathered.counted <= masked.counted).all()
    assert gathered.counted.sum() < masked.counted.sum()


def test_counting_leaves_model_unchanged(tiny_model_dir, minilm_tokenizer):
    model = _hashee(tiny_model_dir("bert"), minilm_tokenizer, [1, 2, 3, 4])
    model.model.bert.embeddings.requires_grad_(False)
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch, form="gathered").logits
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    model.train()
    count_split(model_target(model), _encoded(minilm_tokenizer), minilm_tokenizer.pad_token_id)
    assert model.training
    model.eval()

    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == requires_grad
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
    with torch.no_grad():
        after = model(**batch, form="gathered").logits
    assert torch.equal(after, before)


def test_counts_ignore_mode_and_gradients(tiny_model_dir, minilm_tokenizer):
    encoded = _encoded(minilm_tokenizer)
    model = _hashee(tiny_model_dir("bert"), minilm_tokenizer, [1, 2, 3, 4])
    results = []
    for training, trainable in ((False, True), (True, True), (True, False), (False, False)):
        model.train(training)
        model.requires_grad_(trainable)
        results.append(count_split(model_target(model), encoded, minilm_tokenizer.pad_token_id))
    for counts in results[1:]:
        assert (counts.counted == results[0].counted).all()
        assert (counts.counted_layers == results[0].counted_layers).all()


def test_empty_split_is_rejected(tiny_model_dir, minilm_tokenizer):
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    empty = EncodedSplit(_split([], "empty.tsv"), [], None, None, 0)
    with pytest.raises(HasheeError, match="empty.tsv has no examples to count"):
        count_split(model_target(model), empty, 0)


def test_sequence_longer_than_positions_is_rejected(tiny_model_dir, minilm_tokenizer):
    """The tiny models have 128 positions; a 200-token example names its line."""
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    encoded = _encoded(minilm_tokenizer, ["short", " ".join(["long"] * 300)], max_seq_length=200)
    with pytest.raises(HasheeError, match="sentences.tsv line 3: the example has 200 tokens but the model has 128 positions"):
        count_split(model_target(model), encoded, 0)


def test_batch_size_zero_is_rejected(tiny_model_dir, minilm_tokenizer):
    model = HashEEModel(_classifier(tiny_model_dir("bert")))
    with pytest.raises(HasheeError, match="--batch-size must be at least 1"):
        count_split(model_target(model), _encoded(minilm_tokenizer), 0, batch_size=0)
