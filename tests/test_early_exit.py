"""Sentence-level early exit: exit rules on hand-made logits, replay against the real forward, cost."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hashee_cli.errors import HasheeError
from hashee_cli.flops import EncoderDims, early_exit_macs, head_macs, layer_macs
from hashee_cli.modeling.early_exit import EarlyExitModel, replay_exits
from hashee_cli.modeling.exit_rules import EntropyRule, PatienceRule, build_rules, entropy
from hashee_cli.modeling.multi_exit import MultiExitModel

SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "bad",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes the audience is too stupid to notice",
    "it 's a charming and often affecting journey .",
    "an utterly incompetent conclusion",
    "if you 've seen one of these films you have seen them all , and this one is neither better nor worse",
    "funny",
    "the acting is fine but the story drags on for far too long before it finally goes nowhere at all",
    "a sly , intelligent thriller",
    "dull , lifeless and predictable",
]


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [100.0, 0.0], [math.log(3.0), 0.0]])
    # Uniform over 2 classes: ln 2; one-hot: 0; probabilities 3/4 and 1/4: -(0.75 ln 0.75 + 0.25 ln 0.25).
    expected = torch.tensor([math.log(2.0), 0.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    torch.testing.assert_close(entropy(logits), expected, atol=1e-6, rtol=0)


def test_entropy_replay_by_hand():
    # Three layers, three examples; entropies per layer are about
    #   example 0: 0.000 (one-hot)          -> exits at layer 1 under threshold 0.3
    #   example 1: 0.693, 0.000             -> exits at layer 2
    #   example 2: 0.693, 0.693             -> runs to layer 3
    confident, unsure = [20.0, 0.0], [0.0, 0.0]
    all_logits = torch.tensor(
        [
            [confident, unsure, unsure],
            [confident, [0.0, 20.0], unsure],
            [confident, [0.0, 20.0], [1.0, 0.0]],
        ]
    )
    output = replay_exits(all_logits, EntropyRule(0.3, num_labels=2))
    assert output.exit_layers.tolist() == [1, 2, 3]
    assert output.logits.argmax(dim=-1).tolist() == [0, 1, 0]
    torch.testing.assert_close(output.logits[2], torch.tensor([1.0, 0.0]))
    # Threshold 0 exits nothing because entropy < 0 never holds.
    assert replay_exits(all_logits, EntropyRule(0.0, num_labels=2)).exit_layers.tolist() == [3, 3, 3]


def test_patience_replay_by_hand():
    # Predicted classes per layer (rows) for three examples (columns), five layers.
    classes = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 1, 0]])
    all_logits = torch.nn.functional.one_hot(classes, 2).float()  # (L, N, C)
    # Patience 2: two agreements in a row. Example 0 agrees at layers 2 and 3 -> exits at 3;
    # example 1 agrees at layers 3 and 4 -> exits at 4; example 2 agrees at 2, breaks at 3, agrees at 4, 5 -> last layer.
    output = replay_exits(all_logits, PatienceRule(2, num_layers=5))
    assert output.exit_layers.tolist() == [3, 4, 5]
    assert output.logits.argmax(dim=-1).tolist() == [0, 1, 0]
    assert replay_exits(all_logits, PatienceRule(1, num_layers=5)).exit_layers.tolist() == [2, 3, 2]


def test_patience_regression_tolerance():
    values = torch.tensor([[1.0, 1.0], [1.05, 2.0], [1.08, 3.0], [1.5, 3.01]])  # (L, N)
    # Changes below 0.1 count as agreement: example 0 agrees at layers 2 and 3, example 1 only at layer 4.
    output = replay_exits(values, PatienceRule(2, num_layers=4, regression=True, tolerance=0.1))
    assert output.exit_layers.tolist() == [3, 4]
    torch.testing.assert_close(output.logits, torch.tensor([1.08, 3.01]))


@pytest.mark.parametrize(
    ("make_rule", "message"),
    [
        (lambda: PatienceRule(0, num_layers=6), "patience 0 is invalid"),
        (lambda: PatienceRule(6, num_layers=6), "can never be reached with 6 layers"),
        (lambda: EntropyRule(-0.1, num_labels=2), "entropy threshold -0.1 is invalid"),
        (lambda: EntropyRule(0.8, num_labels=2), "above ln 2 = 0.6931"),
        (lambda: EntropyRule(float("nan"), num_labels=3), "give thresholds in [0, 1.0986]"),
        (lambda: build_rules("entropy", 6, 1, regression=True), "use --exit-rule patience"),
        (lambda: build_rules("entropie", 6, 2, regression=False), "did you mean entropy?"),
        (lambda: build_rules("patience", 6, 2, regression=False, thresholds=[0.1]), "takes --patience"),
    ],
)
def test_invalid_settings_are_rejected(make_rule, message):
    with pytest.raises(HasheeError) as error:
        make_rule()
    assert message in str(error.value)


def test_default_sweeps():
    entropy_rules = build_rules("entropy", 6, 3, regression=False)
    assert entropy_rules[0].threshold == 0.0
    assert entropy_rules[-1].threshold == pytest.approx(math.log(3), abs=1e-6)
    patience_rules = build_rules("patience", 6, 2, regression=False)
    assert [rule.patience for rule in patience_rules] == [1, 2, 3, 4, 5]


def test_early_exit_macs_by_hand():
    dims = EncoderDims(hidden_size=4, intermediate_size=16, num_layers=3, num_labels=2)
    macs = early_exit_macs(dims, torch.tensor([3, 5]), torch.tensor([1, 3]))
    # Example 0: one layer on 3 tokens plus one classifier; example 1: three layers on 5 tokens plus three classifiers.
    expected = [layer_macs(dims, 3, 3) + head_macs(dims), 3 * (layer_macs(dims, 5, 5) + head_macs(dims))]
    assert macs.tolist() == expected


@pytest.fixture(scope="module")
def multi_exit_model(tiny_model_dir):
    torch.manual_seed(0)
    hf_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir("bert"), num_labels=3)
    torch.manual_seed(1)
    return MultiExitModel(hf_model).eval()


@pytest.fixture(scope="module")
def batch(minilm_tokenizer):
    return minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")


def _thresholds_between_entropies(all_logits: torch.Tensor) -> list[float]:
    """Thresholds halfway between the observed entropies, so that no decision sits on a rounding edge."""
    values = sorted(set(round(value, 5) for value in entropy(all_logits[:-1].reshape(-1, all_logits.shape[-1])).tolist()))
    middles = [(low + high) / 2 for low, high in zip(values, values[1:])]
    return middles[:: max(1, len(middles) // 6)]


def _run_in_batches(runner: EarlyExitModel, batch, batch_size: int):
    logits, exits = [], []
    for start in range(0, len(SENTENCES), batch_size):
        rows = slice(start, start + batch_size)
        mask = batch["attention_mask"][rows]
        width = int(mask.sum(dim=1).max())  # drop the padding that only other batches needed
        output = runner(
            input_ids=batch["input_ids"][rows, :width],
            attention_mask=mask[:, :width],
            token_type_ids=batch["token_type_ids"][rows, :width],
        )
        logits.append(output.logits)
        exits.append(output.exit_layers)
    return torch.cat(logits), torch.cat(exits)


def test_replay_matches_real_early_exit(multi_exit_model, batch):
    with torch.no_grad():
        all_logits = multi_exit_model(**batch).all_logits  # (L, N, C)
    rules = [EntropyRule(threshold, 3) for threshold in _thresholds_between_entropies(all_logits)]
    rules += [PatienceRule(patience, multi_exit_model.num_layers) for patience in range(1, multi_exit_model.num_layers)]

    mixed = 0
    for rule in rules:
        replayed = replay_exits(all_logits, rule)
        runner = EarlyExitModel(multi_exit_model, rule)
        with torch.no_grad():
            whole = runner(**batch)
            by_four = _run_in_batches(runner, batch, 4)
            one_by_one = _run_in_batches(runner, batch, 1)
        for logits, exits in ((whole.logits, whole.exit_layers), by_four, one_by_one):
            assert exits.tolist() == replayed.exit_layers.tolist(), rule
            assert logits.argmax(dim=-1).tolist() == replayed.logits.argmax(dim=-1).tolist(), rule
            torch.testing.assert_close(logits, replayed.logits, atol=1e-5, rtol=0)
        mixed += len(set(replayed.exit_layers.tolist())) > 1
    # The sweep must include settings where examples leave at different layers, or the test proves little.
    assert mixed >= 3


def test_exited_examples_leave_the_batch(multi_exit_model, batch):
    with torch.no_grad():
        all_logits = multi_exit_model(**batch).all_logits
    rule = PatienceRule(1, multi_exit_model.num_layers)
    expected = replay_exits(all_logits, rule).exit_layers

    rows_per_layer = []
    hooks = [
        parts.query.register_forward_hook(lambda module, inputs, output: rows_per_layer.append(inputs[0].shape[0]))
        for parts in multi_exit_model.layer_parts
    ]
    try:
        with torch.no_grad():
            EarlyExitModel(multi_exit_model, rule)(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    # Layer l runs exactly the examples that had not exited before it.
    running = [int((expected >= layer).sum()) for layer in range(1, multi_exit_model.num_layers + 1)]
    assert rows_per_layer == [count for count in running if count > 0]
    assert running[-1] < len(SENTENCES)
