"""The token-level exit layer loop, in its masked (training) and gathered (inference) forms.

Dimension legend used in shape comments:
    B  batch size               T  padded sequence length
    D  hidden size              H  attention heads, Dh = D / H
    F  feed-forward size
    L  number of layers         N  active tokens at one layer (over the batch)
    Bl examples with at least one active token at one layer
    Tq most active tokens of any one example at one layer
    S  key span at one layer: positions up to the last non-padding token of the Bl examples

A token is active at layer l (1-based) when its exit layer is >= l. At each
layer, keys and values come from every non-padding token, active or exited,
while queries, the attention output, the residual LayerNorms and the
feed-forward block are computed for active tokens only. Exited tokens keep the
state they had when they left. Padding has exit layer 0, so it is never active,
and the key mask removes it from every attention.

``ExitLayer`` wraps the three forms in one module per layer, so that hooks
and traces (fvcore's per-layer counts) see each layer as one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hashee_cli.modeling.architectures import LayerParts


def _split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    # (..., S, D) -> (..., H, S, Dh)
    *leading, length, width = states.shape
    return states.view(*leading, length, num_heads, width // num_heads).transpose(-3, -2)


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    # (..., H, S, Dh) -> (..., S, D)
    *leading, heads, length, head_dim = states.shape
    return states.transpose(-3, -2).reshape(*leading, length, heads * head_dim)


def _attention_output(parts: LayerParts, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Project the attention context, add the residual and normalise (shapes (..., D))."""
    return parts.attention_norm(parts.attention_output_dropout(parts.attention_output(context)) + residual)


def _feed_forward(parts: LayerParts, attention_output: torch.Tensor) -> torch.Tensor:
    """Run the feed-forward block with its residual and LayerNorm (shapes (..., D))."""
    intermediate = parts.activation(parts.intermediate(attention_output))  # (..., F)
    return parts.output_norm(parts.output_dropout(parts.output(intermediate)) + attention_output)


def _full_attention(parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Return the attention context (B, T, D) of every token; queries, keys and values are freed on return."""
    dropout = parts.attention_dropout if parts.query.training else 0.0
    query = _split_heads(parts.query(hidden_states), parts.num_heads)  # (B, H, T, Dh)
    key = _split_heads(parts.key(hidden_states), parts.num_heads)
    value = _split_heads(parts.value(hidden_states), parts.num_heads)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout)
    return _merge_heads(context)  # (B, T, D)


def full_layer(parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Run one layer on every token: hidden_states (B, T, D), key_mask (B, 1, 1, T) -> (B, T, D)."""
    # The context is passed as a temporary so that it is freed before the
    # feed-forward block allocates its (B, T, F) activations.
    attention_output = _attention_output(parts, _full_attention(parts, hidden_states, key_mask), hidden_states)
    return _feed_forward(parts, attention_output)


def masked_layer(
    parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """Run one layer densely and keep the old state of exited tokens; active is (B, T) bool.

    Exited tokens still provide keys and values because the dense layer reads
    all states, and their own (discarded) outputs cost compute but change nothing.
    """
    updated = full_layer(parts, hidden_states, key_mask)
    return torch.where(active.unsqueeze(-1), updated, hidden_states)


@dataclass
class LayerPlan:
    """Index tensors that gather one layer's active tokens; built once per batch for all layers.

    ``token_index`` (N,) indexes the flattened (B*T) hidden states.
    ``example_index`` (Bl,) lists the examples that still have active tokens.
    ``slot_index`` (N,) places each active token in the padded query block of
    shape (Bl*Tq), example by example, in sequence order.
    ``key_span`` (S) ends after the last non-padding position of those examples,
    so keys and values skip the padding columns beyond it.
    """

    token_index: torch.Tensor
    example_index: torch.Tensor
    slot_index: torch.Tensor
    num_tokens: int
    num_examples: int
    num_queries: int
    key_span: int


def plan_layers(exit_layers: torch.Tensor, num_layers: int) -> list[LayerPlan]:
    """Build the gather plan of every layer from exit layers (B, T), 0 meaning padding.

    All layers are planned together with three host-device synchronisations
    in total (the sizes and two ``nonzero`` calls), not one per layer, and
    the index tensors are reused by every call of the layer.

    NOTE: the plans of all layers (about 16 bytes per active token and layer)
    are alive during layer 1, whose feed-forward block sets the peak memory.
    Without padding to skip (batch size 1) the gathered form's peak is
    therefore that much above the dense form's.
    """
    batch_size, seq_len = exit_layers.shape
    device = exit_layers.device
    depth = torch.arange(1, num_layers + 1, device=device).view(-1, 1, 1)  # (L, 1, 1)
    active = exit_layers.unsqueeze(0) >= depth  # (L, B, T)

    counts = active.sum(dim=-1)  # (L, B) active tokens per example
    has_active = counts > 0  # (L, B)
    rank = active.cumsum(dim=-1) - 1  # (L, B, T) position of each active token among its example's
    row = has_active.cumsum(dim=-1) - 1  # (L, B) row of each example in the layer's sub-batch

    # One past the last non-padding position of each example, then the widest over the examples still running.
    positions = torch.arange(1, seq_len + 1, device=device)  # (T,)
    token_end = ((exit_layers > 0) * positions).amax(dim=-1)  # (B,)
    key_span = (has_active * token_end).amax(dim=-1)  # (L,)

    sizes = torch.stack([counts.sum(dim=-1), has_active.sum(dim=-1), counts.amax(dim=-1), key_span], dim=1).tolist()
    token_coords = active.nonzero()  # (sum of N, 3) rows of (layer, example, position), sorted by layer
    example_coords = has_active.nonzero()  # (sum of Bl, 2) rows of (layer, example)

    token_chunks = token_coords.split([size[0] for size in sizes])
    example_chunks = example_coords.split([size[1] for size in sizes])

    plans = []
    for layer, (num_tokens, num_examples, num_queries, span) in enumerate(sizes):
        _, example, position = token_chunks[layer].unbind(dim=1)  # each (N,)
        plans.append(
            LayerPlan(
                token_index=example * seq_len + position,
                example_index=example_chunks[layer][:, 1],
                slot_index=row[layer, example] * num_queries + rank[layer, example, position],
                num_tokens=num_tokens,
                num_examples=num_examples,
                num_queries=num_queries,
                key_span=span,
            )
        )
    return plans


def _gathered_attention(
    parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor, plan: LayerPlan, active_states: torch.Tensor
) -> torch.Tensor:
    """Return the attention context (N, D) of the active tokens; keys, values and queries are freed on return."""
    batch_size, seq_len, width = hidden_states.shape
    context_states = hidden_states[:, : plan.key_span]  # (B, S, D), a view
    context_mask = key_mask[..., : plan.key_span]  # (B, 1, 1, S)
    if plan.num_examples < batch_size:
        context_states = context_states.index_select(0, plan.example_index)  # (Bl, S, D)
        context_mask = context_mask.index_select(0, plan.example_index)  # (Bl, 1, 1, S)
    key = _split_heads(parts.key(context_states), parts.num_heads)  # (Bl, H, S, Dh)
    value = _split_heads(parts.value(context_states), parts.num_heads)

    # Queries of the active tokens, packed per example into a block of Tq rows.
    query_rows = parts.query(active_states)  # (N, D)
    packed = plan.num_examples * plan.num_queries == plan.num_tokens
    if packed:
        # Every example has Tq active tokens (batch size 1, or every token active):
        # the rows are already in block order and need no padding.
        query_block = query_rows  # (Bl*Tq, D)
    else:
        # Padded query slots attend like any query and their outputs are dropped.
        query_block = query_rows.new_zeros(plan.num_examples * plan.num_queries, width)
        query_block = query_block.index_copy(0, plan.slot_index, query_rows)  # (Bl*Tq, D)
    query = _split_heads(query_block.view(plan.num_examples, plan.num_queries, width), parts.num_heads)  # (Bl, H, Tq, Dh)

    dropout = parts.attention_dropout if parts.query.training else 0.0
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=context_mask, dropout_p=dropout)
    context = _merge_heads(context).reshape(plan.num_examples * plan.num_queries, width)  # (Bl*Tq, D)
    if packed:
        return context  # (N, D)
    return context.index_select(0, plan.slot_index)  # (N, D)


def gathered_layer(
    parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor, plan: LayerPlan
) -> torch.Tensor:
    """Run one layer on the active tokens only and scatter their new states back.

    hidden_states (B, T, D) and key_mask (B, 1, 1, T) cover the whole batch.
    Queries and the feed-forward block run on the N active tokens. Keys and
    values run on the first S positions of the Bl examples that still have
    active tokens, because exited tokens are still read by the active ones.
    """
    batch_size, seq_len, width = hidden_states.shape
    if plan.num_tokens == 0:
        return hidden_states
    flat_states = hidden_states.reshape(batch_size * seq_len, width)  # (B*T, D)
    active_states = flat_states.index_select(0, plan.token_index)  # (N, D)

    context = _gathered_attention(parts, hidden_states, key_mask, plan, active_states)  # (N, D)
    attention_output = _attention_output(parts, context, active_states)  # (N, D)
    # Free the gathered copies before the feed-forward block allocates its (N, F)
    # activations, so that the peak stays at or below the dense layer's.
    del context, active_states
    updated = _feed_forward(parts, attention_output)  # (N, D)
    if torch.is_grad_enabled():
        flat_states = flat_states.index_copy(0, plan.token_index, updated)
    else:
        # Without autograd the states can be updated in place; the caller owns them.
        flat_states.index_copy_(0, plan.token_index, updated)
    return flat_states.view(batch_size, seq_len, width)


class ExitLayer(nn.Module):
    """One encoder layer in the form its ``exits`` argument selects.

    ``exits`` is None for the dense layer, a (B, T) bool tensor of active
    tokens for the masked form, or a ``LayerPlan`` for the gathered form.
    The layer's modules stay registered only in the backbone, so this module
    adds no parameters and no state-dict entries.
    """

    def __init__(self, parts: LayerParts):
        super().__init__()
        # nn.Module registers only modules and parameters it is given directly;
        # a LayerParts dataclass is kept as a plain attribute.
        self.parts = parts

    def forward(
        self, hidden_states: torch.Tensor, key_mask: torch.Tensor, exits: torch.Tensor | LayerPlan | None = None
    ) -> torch.Tensor:
        if exits is None:
            return full_layer(self.parts, hidden_states, key_mask)
        if isinstance(exits, LayerPlan):
            return gathered_layer(self.parts, hidden_states, key_mask, exits)
        return masked_layer(self.parts, hidden_states, key_mask, exits)
