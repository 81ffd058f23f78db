"""Cost of seq2seq generation: the analytic model by hand, against fvcore on the real forward, HashEE against full."""

from __future__ import annotations

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration

from hashee_cli.seq2seq.flops import LayerCost, Seq2SeqCosts, decoder_step_macs, encoder_macs, full_decoding_macs
from hashee_cli.seq2seq.fvcore_count import count_generation_macs
from hashee_cli.seq2seq.generation import GenerationSettings, generate
from hashee_cli.seq2seq.model import HashEESeq2SeqModel
from test_seq2seq_model import FAMILIES, hashee, source_batch, tiny_seq2seq


def small_bart(num_layers: int = 1) -> HashEESeq2SeqModel:
    """d = 8, feed-forward 16, vocabulary 10, ``num_layers`` layers in each stack."""
    config = BartConfig(
        vocab_size=10, d_model=8, encoder_layers=num_layers, decoder_layers=num_layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2,
    )
    return HashEESeq2SeqModel(BartForConditionalGeneration(config))


def test_layer_costs_read_from_module_shapes():
    costs = Seq2SeqCosts.from_model(small_bart())
    # Keys and values 2 * 8 * 8; query and output 2 * 8 * 8; feed-forward 8 * 16 + 16 * 8.
    assert costs.encoder == (LayerCost(key_value=128, query_output=128, attention_width=8, feed_forward=256),)
    assert costs.decoder == (LayerCost(128, 128, 8, 256, cross_query_output=128, cross_key_value=128, cross_attention_width=8),)
    assert costs.head == 8 * 10
    assert costs.bridge == 0


def test_decoder_step_macs_by_hand():
    costs = Seq2SeqCosts.from_model(small_bart())
    sources = torch.tensor([5, 5])
    # Active token reading 3 decoder keys and 5 source tokens:
    # head 80 + keys/values 128 + query/output 128 + scores 2*8*3 + cross query/output 128 + cross scores 2*8*5 + feed-forward 256.
    active = 80 + 128 + 128 + 48 + 128 + 80 + 256
    # A padding position (exit layer 0) still gets keys, values and the head.
    assert decoder_step_macs(costs, torch.tensor([1, 0]), 3, sources).tolist() == [active, 80 + 128]


def test_encoder_macs_by_hand():
    costs = Seq2SeqCosts.from_model(small_bart(num_layers=2))
    active_cost = 128 + 2 * 8 * 3 + 256  # query/output, scores over 3 keys, feed-forward
    cross_keys_values = 3 * 2 * 128  # the source's keys and values at both decoder layers
    # Layer 1: all 3 tokens active; layer 2: one active, the other two still give keys and values.
    expected = 3 * 128 + 3 * active_cost + 3 * 128 + 1 * active_cost + cross_keys_values
    # Padding (exit layer 0) costs nothing.
    assert encoder_macs(costs, torch.tensor([[2, 1, 1, 0]])).tolist() == [expected]
    # With every token gone after layer 1, layer 2 is skipped, keys and values included.
    assert encoder_macs(costs, torch.tensor([[1, 1, 1]])).tolist() == [3 * 128 + 3 * active_cost + cross_keys_values]


def test_full_decoding_macs_adds_every_step():
    costs = Seq2SeqCosts.from_model(small_bart())
    one_step = float(encoder_macs(costs, torch.ones(1, 4, dtype=torch.long)) + decoder_step_macs(costs, torch.tensor([1]), 1, torch.tensor([4])))
    second_step = float(decoder_step_macs(costs, torch.tensor([1]), 2, torch.tensor([4])))
    assert full_decoding_macs(costs, 4, 1) == one_step
    assert full_decoding_macs(costs, 4, 2) == one_step + second_step


@pytest.mark.parametrize("family", FAMILIES)
def test_fvcore_counts_what_the_analytic_model_counts(family):
    """On the real generation forward of one example, fvcore's matrix products equal the analytic MACs."""
    input_ids, attention_mask = source_batch()
    length = int(attention_mask[1].sum())
    source, mask = input_ids[1:2, :length], attention_mask[1:2, :length]
    settings = GenerationSettings(max_new_tokens=5)
    for model in (HashEESeq2SeqModel(tiny_seq2seq(family)), hashee(tiny_seq2seq(family))):
        counted = count_generation_macs(model, source, mask, settings, include_norms=False)
        analytic = generate(model, source, mask, settings)
        assert torch.equal(counted.sequence, analytic.sequences)
        assert counted.encoder_macs + counted.decoder_macs == float(analytic.encoder_macs + analytic.decoder_macs)
        with_norms = count_generation_macs(model, source, mask, settings)
        # LayerNorm (BART, BERT) is element-wise work that only fvcore counts; T5's RMS norm is not counted at all.
        assert with_norms.encoder_macs + with_norms.decoder_macs >= counted.encoder_macs + counted.decoder_macs


def test_hashee_generation_costs_less_than_full():
    input_ids, attention_mask = source_batch()
    settings = GenerationSettings(max_new_tokens=6)
    full_model = tiny_seq2seq("bart")
    full = generate(HashEESeq2SeqModel(full_model), input_ids, attention_mask, settings)
    exits = generate(hashee(full_model), input_ids, attention_mask, settings)
    costs = Seq2SeqCosts.from_model(HashEESeq2SeqModel(full_model))
    assert (exits.encoder_macs < full.encoder_macs).all()
    # A summary whose every fed token hashes to the last layer costs as much as the full model's.
    assert (exits.decoder_macs <= full.decoder_macs).all()
    assert exits.decoder_macs.sum() < full.decoder_macs.sum()
    for row in range(4):
        length = int(attention_mask[row].sum())
        assert float(full.encoder_macs[row] + full.decoder_macs[row]) == full_decoding_macs(costs, length, 6)
