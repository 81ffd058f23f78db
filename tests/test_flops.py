"""The analytic cost model on hand-checkable cases."""

from __future__ import annotations

import torch

from hashee_cli.flops import EncoderDims, example_macs, full_model_macs, head_macs, layer_macs

DIMS = EncoderDims(hidden_size=4, intermediate_size=16, num_layers=2, num_labels=2)


def test_layer_macs_by_hand():
    # 3 tokens, 1 active, d=4, f=16: keys/values 2*3*16 = 96; active 2*16 + 2*4*16 + 2*3*4 = 32 + 128 + 24 = 184.
    assert layer_macs(DIMS, 3, 1) == 96 + 184
    assert layer_macs(DIMS, 3, 0) == 96


def test_head_macs_by_hand():
    assert head_macs(DIMS) == 4 * 4 + 4 * 2


def test_all_tokens_at_last_layer_equals_full_model():
    exit_layers = torch.tensor([[2, 2, 2, 0]])
    assert example_macs(DIMS, exit_layers).item() == full_model_macs(DIMS, 3)


def test_earlier_exits_cost_less_and_padding_costs_nothing():
    late = example_macs(DIMS, torch.tensor([[2, 2, 2]])).item()
    early = example_macs(DIMS, torch.tensor([[2, 1, 1]])).item()
    padded = example_macs(DIMS, torch.tensor([[2, 1, 1, 0, 0]])).item()
    assert early < late
    assert padded == early
    # Layer 2 with one active token instead of three: two active tokens' worth less.
    assert late - early == layer_macs(DIMS, 3, 3) - layer_macs(DIMS, 3, 1)
