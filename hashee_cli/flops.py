"""Analytic cost model of the encoders, in multiply-accumulates (MACs).

One MAC is one multiply and one add. fvcore's FlopCountAnalysis counts one
fused multiply-add as one "flop", so its figures are MACs too; a count in
FLOPs (a multiply and an add counted apart) is twice the MAC count.

For a post-LayerNorm layer with hidden size d, feed-forward size f, n
non-padding tokens of which a are active:

    keys and values           2 * n * d^2     every token, active or exited
    queries                   a * d^2
    attention scores Q K^T    a * n * d       summed over heads
    weighted sum of values    a * n * d
    attention output          a * d^2
    feed-forward              2 * a * d * f

so an active token costs about 4d^2 + 2df + 2nd (12 d^2 + 2nd when f = 4d)
and an exited one 2 d^2. Element-wise work (LayerNorm, softmax, GELU, bias
adds) is not counted. The classification head adds its own matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

UNIT = "MACs"
UNIT_NOTE = "multiply-accumulates: fvcore's 'flops' count one multiply-add as one"


@dataclass(frozen=True)
class EncoderDims:
    """The sizes the cost model needs, read from a Hugging Face config."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_labels: int
    embedding_size: int | None = None
    head_dense: bool = True

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> EncoderDims:
        hidden = getattr(config, "hidden_size", None) or config.dim
        intermediate = getattr(config, "intermediate_size", None) or config.hidden_dim
        embedding = getattr(config, "embedding_size", None)
        return cls(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_layers=config.num_hidden_layers,
            num_labels=config.num_labels,
            embedding_size=embedding if embedding and embedding != hidden else None,
        )


def layer_macs(dims: EncoderDims, num_tokens, num_active):
    """Return the MACs of one layer for ``num_tokens`` tokens of which ``num_active`` are active.

    Works on Python numbers and elementwise on tensors of the same shape.
    """
    d, f = dims.hidden_size, dims.intermediate_size
    keys_values = 2 * num_tokens * d * d
    per_active = 2 * d * d + 2 * d * f + 2 * num_tokens * d
    return keys_values + num_active * per_active


def head_macs(dims: EncoderDims) -> int:
    """Return the MACs of the classification head (a dense layer on the first token, then the classifier)."""
    dense = dims.hidden_size * dims.hidden_size if dims.head_dense else 0
    return dense + dims.hidden_size * dims.num_labels


def embedding_macs(dims: EncoderDims, num_tokens):
    """Return the MACs of the embedding projection (ELECTRA), or 0 when there is none."""
    if dims.embedding_size is None:
        return 0 * num_tokens
    return num_tokens * dims.embedding_size * dims.hidden_size


def example_layer_macs(dims: EncoderDims, exit_layers: torch.Tensor) -> torch.Tensor:
    """Return the MACs of each layer for each example, shape (B, L), from exit layers (B, T) with 0 for padding."""
    num_tokens = (exit_layers > 0).sum(dim=1).to(torch.float64)  # (B,)
    depth = torch.arange(1, dims.num_layers + 1, device=exit_layers.device).view(-1, 1, 1)  # (L, 1, 1)
    active = (exit_layers.unsqueeze(0) >= depth).sum(dim=2).to(torch.float64)  # (L, B)
    return layer_macs(dims, num_tokens.unsqueeze(0), active).T  # (B, L)


def example_macs(dims: EncoderDims, exit_layers: torch.Tensor) -> torch.Tensor:
    """Return the MACs of each example, shape (B,), from exit layers (B, T) with 0 for padding.

    Counts the embedding projection, every layer with its active tokens, and
    the head, as if each example ran alone (no padding).
    """
    num_tokens = (exit_layers > 0).sum(dim=1).to(torch.float64)  # (B,)
    layers = example_layer_macs(dims, exit_layers).sum(dim=1)  # (B,)
    return embedding_macs(dims, num_tokens) + layers + head_macs(dims)


def full_model_macs(dims: EncoderDims, num_tokens: int) -> int:
    """Return the MACs of the full model on one example of ``num_tokens`` tokens."""
    return int(embedding_macs(dims, num_tokens) + dims.num_layers * layer_macs(dims, num_tokens, num_tokens) + head_macs(dims))


def early_exit_macs(dims: EncoderDims, num_tokens: torch.Tensor, exit_layers: torch.Tensor) -> torch.Tensor:
    """Return the MACs of sentence-level early exit per example, shape (B,).

    ``num_tokens`` (B,) counts each example's non-padding tokens and
    ``exit_layers`` (B,) is the layer it left after. An example runs layers
    1..e on all its tokens and evaluates the classifier after each of them,
    e classifiers in all: the internal ones of layers 1..e (the last layer's
    is the model's own head), each costing ``head_macs``. The entropy and
    agreement checks are element-wise and not counted.
    """
    tokens = num_tokens.to(torch.float64)
    layers = exit_layers.to(torch.float64)
    return embedding_macs(dims, tokens) + layers * (layer_macs(dims, tokens, tokens) + head_macs(dims))
