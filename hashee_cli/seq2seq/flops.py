"""Cost of seq2seq HashEE in multiply-accumulates (MACs): an analytic model and an fvcore count.

The unit is the one of ``hashee_cli.flops``: one MAC is one multiply and one
add, the quantity that fvcore's FlopCountAnalysis reports as a "flop".

Analytic model, read from the shapes of the model's own linear layers. For a
projection of in_features x out_features, one token costs their product. Per
layer and per token:

    keys and values           every token, active or exited (later queries read them),
                              at every layer where the example still has an active token
    query, attention output   active tokens only
    attention scores Q K^T    2 * W * k per active query that reads k keys (scores and weighted sum, W = H * Dh)
    feed-forward              active tokens only

The decoder layer adds cross-attention for its active tokens: query, output
and 2 * W * S for S source tokens. The keys and values of the source are
projected once per example at every decoder layer, and this cost is charged
to the encoder side. Generation with a key/value cache feeds one token per step: at
step t (1-based) that token reads t keys, and the language-model head runs
once per step. Element-wise work (norms, softmax, activations, embeddings)
is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hashee_cli.seq2seq.architectures import AttentionParts, Seq2SeqLayerParts


def _linear_macs(*linears: nn.Linear) -> int:
    return sum(linear.in_features * linear.out_features for linear in linears)


@dataclass(frozen=True)
class LayerCost:
    """MACs of one layer's parts for one token (attention scores per query and key)."""

    key_value: int
    query_output: int
    attention_width: int
    feed_forward: int
    cross_query_output: int = 0
    cross_key_value: int = 0
    cross_attention_width: int = 0

    @classmethod
    def from_parts(cls, parts: Seq2SeqLayerParts) -> LayerCost:
        def projections(attention: AttentionParts) -> tuple[int, int, int]:
            return (
                _linear_macs(attention.key, attention.value),
                _linear_macs(attention.query, attention.output),
                attention.query.out_features,
            )

        key_value, query_output, width = projections(parts.self_attention)
        cross = projections(parts.cross_attention) if parts.cross_attention is not None else (0, 0, 0)
        return cls(key_value, query_output, width, _linear_macs(*parts.feed_forward_linears), cross[1], cross[0], cross[2])


@dataclass(frozen=True)
class Seq2SeqCosts:
    """Per-layer costs of both stacks, the head's cost per decoder position and the bridge's per source token."""

    encoder: tuple[LayerCost, ...]
    decoder: tuple[LayerCost, ...]
    head: int
    bridge: int

    @classmethod
    def from_model(cls, model) -> Seq2SeqCosts:
        """Read the costs from a ``HashEESeq2SeqModel``."""
        architecture, hf_model = model.architecture, model.model
        return cls(
            encoder=tuple(LayerCost.from_parts(parts) for parts in model.encoder_layers),
            decoder=tuple(LayerCost.from_parts(parts) for parts in model.decoder_layers),
            head=_linear_macs(*architecture.head_linears(hf_model)),
            bridge=_linear_macs(*architecture.bridge_linears(hf_model)),
        )


def encoder_macs(costs: Seq2SeqCosts, exit_layers: torch.Tensor) -> torch.Tensor:
    """Return the source-side MACs of each example (B,) from encoder exit layers (B, S), 0 for padding.

    Counts the encoder layers, the bridge projection and the cross-attention
    keys and values of every decoder layer, as if each example ran alone.
    """
    num_tokens = (exit_layers > 0).sum(dim=1).to(torch.float64)  # (B,)
    total = num_tokens * (costs.bridge + sum(layer.cross_key_value for layer in costs.decoder))
    for depth, layer in enumerate(costs.encoder, start=1):
        active = (exit_layers >= depth).sum(dim=1).to(torch.float64)  # (B,)
        per_active = layer.query_output + layer.feed_forward + 2 * layer.attention_width * num_tokens
        # An example whose tokens have all exited skips the layer, keys and values included.
        total = total + (active > 0) * num_tokens * layer.key_value + active * per_active
    return total


def decoder_step_macs(
    costs: Seq2SeqCosts, exit_layers: torch.Tensor, num_keys: int | torch.Tensor, source_lengths: torch.Tensor
) -> torch.Tensor:
    """Return the MACs (R,) of one cached decoding step for rows whose fed token exits at exit_layers (R,).

    ``num_keys`` is the number of decoder positions each new token reads
    (itself included); ``source_lengths`` (R,) the non-padding source tokens.
    """
    source = source_lengths.to(torch.float64)
    total = torch.full_like(source, float(costs.head))
    for depth, layer in enumerate(costs.decoder, start=1):
        active = (exit_layers >= depth).to(torch.float64)  # (R,)
        per_active = (
            layer.query_output
            + 2 * layer.attention_width * num_keys
            + layer.cross_query_output
            + 2 * layer.cross_attention_width * source
            + layer.feed_forward
        )
        total = total + layer.key_value + active * per_active
    return total


def full_decoding_macs(costs: Seq2SeqCosts, source_length: int, num_steps: int) -> float:
    """Return the MACs of the full model (no exits) encoding source_length tokens and decoding num_steps steps."""
    source_cost = encoder_macs(costs, torch.full((1, source_length), len(costs.encoder)))
    lengths = torch.tensor([source_length])
    steps = sum(
        decoder_step_macs(costs, torch.tensor([len(costs.decoder)]), step, lengths) for step in range(1, num_steps + 1)
    )
    return float(source_cost + steps)
