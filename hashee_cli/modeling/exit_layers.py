"""The token-level exit layer loop, in its masked (training) and gathered (inference) forms.

Dimension legend used in shape comments:
    B  batch size               T  padded sequence length
    D  hidden size              H  attention heads, Dh = D / H
    L  number of layers         N  active tokens at one layer (over the batch)
    Bl examples with at least one active token at one layer
    Tq most active tokens of any one example at one layer

A token is active at layer l (1-based) when its exit layer is >= l. At each
layer, keys and values come from every non-padding token, active or exited,
while queries, the attention output, the residual LayerNorms and the
feed-forward block are computed for active tokens only. Exited tokens keep the
state they had when they left. Padding has exit layer 0, so it is never active,
and the key mask removes it from every attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hashee_cli.modeling.architectures import LayerParts


def _split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    # (..., S, D) -> (..., H, S, Dh)
    *leading, length, width = states.shape
    return states.view(*leading, length, num_heads, width // num_heads).transpose(-3, -2)


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    # (..., H, S, Dh) -> (..., S, D)
    *leading, heads, length, head_dim = states.shape
    return states.transpose(-3, -2).reshape(*leading, length, heads * head_dim)


def _attention_output_and_feed_forward(parts: LayerParts, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Project the attention context, add and normalise, then run the feed-forward block (shapes (..., D))."""
    attention_output = parts.attention_norm(parts.attention_output_dropout(parts.attention_output(context)) + residual)
    intermediate = parts.activation(parts.intermediate(attention_output))
    return parts.output_norm(parts.output_dropout(parts.output(intermediate)) + attention_output)


def full_layer(parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Run one layer on every token: hidden_states (B, T, D), key_mask (B, 1, 1, T) -> (B, T, D)."""
    dropout = parts.attention_dropout if parts.query.training else 0.0
    query = _split_heads(parts.query(hidden_states), parts.num_heads)  # (B, H, T, Dh)
    key = _split_heads(parts.key(hidden_states), parts.num_heads)
    value = _split_heads(parts.value(hidden_states), parts.num_heads)
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout)
    return _attention_output_and_feed_forward(parts, _merge_heads(context), hidden_states)


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
    """

    token_index: torch.Tensor
    example_index: torch.Tensor
    slot_index: torch.Tensor
    num_examples: int
    num_queries: int


def plan_layers(exit_layers: torch.Tensor, num_layers: int) -> list[LayerPlan]:
    """Build the gather plan of every layer from exit layers (B, T), 0 meaning padding.

    All layers are planned together with three host-device synchronisations
    in total (the sizes and two ``nonzero`` calls), not one per layer.
    """
    batch_size, seq_len = exit_layers.shape
    depth = torch.arange(1, num_layers + 1, device=exit_layers.device).view(-1, 1, 1)  # (L, 1, 1)
    active = exit_layers.unsqueeze(0) >= depth  # (L, B, T)

    counts = active.sum(dim=-1)  # (L, B) active tokens per example
    has_active = counts > 0  # (L, B)
    rank = active.cumsum(dim=-1) - 1  # (L, B, T) position of each active token among its example's
    row = has_active.cumsum(dim=-1) - 1  # (L, B) row of each example in the layer's sub-batch

    sizes = torch.stack([counts.sum(dim=-1), has_active.sum(dim=-1), counts.amax(dim=-1)], dim=1).tolist()
    token_coords = active.nonzero()  # (sum of N, 3) rows of (layer, example, position), sorted by layer
    example_coords = has_active.nonzero()  # (sum of Bl, 2) rows of (layer, example)

    token_chunks = token_coords.split([size[0] for size in sizes])
    example_chunks = example_coords.split([size[1] for size in sizes])

    plans = []
    for layer, (num_tokens, num_examples, num_queries) in enumerate(sizes):
        _, example, position = token_chunks[layer].unbind(dim=1)  # each (N,)
        plans.append(
            LayerPlan(
                token_index=example * seq_len + position,
                example_index=example_chunks[layer][:, 1],
                slot_index=row[layer, example] * num_queries + rank[layer, example, position],
                num_examples=num_examples,
                num_queries=num_queries,
            )
        )
    return plans


def gathered_layer(
    parts: LayerParts, hidden_states: torch.Tensor, key_mask: torch.Tensor, plan: LayerPlan
) -> torch.Tensor:
    """Run one layer on the active tokens only and scatter their new states back.

    hidden_states (B, T, D) and key_mask (B, 1, 1, T) cover the whole batch.
    Queries and the feed-forward block run on the N active tokens; keys and
    values on every token of the Bl examples that still have active tokens.
    """
    batch_size, seq_len, width = hidden_states.shape
    if plan.token_index.numel() == 0:
        return hidden_states
    flat_states = hidden_states.reshape(batch_size * seq_len, width)  # (B*T, D)
    active_states = flat_states.index_select(0, plan.token_index)  # (N, D)

    if plan.num_examples == batch_size:
        context_states, context_mask = hidden_states, key_mask
    else:
        context_states = hidden_states.index_select(0, plan.example_index)  # (Bl, T, D)
        context_mask = key_mask.index_select(0, plan.example_index)  # (Bl, 1, 1, T)
    key = _split_heads(parts.key(context_states), parts.num_heads)  # (Bl, H, T, Dh)
    value = _split_heads(parts.value(context_states), parts.num_heads)

    # Queries of the active tokens, packed per example into a zero-padded block.
    # Padded query slots attend like any query and their outputs are dropped.
    query_rows = parts.query(active_states)  # (N, D)
    query_block = query_rows.new_zeros(plan.num_examples * plan.num_queries, width)
    query_block = query_block.index_copy(0, plan.slot_index, query_rows)  # (Bl*Tq, D)
    query = _split_heads(query_block.view(plan.num_examples, plan.num_queries, width), parts.num_heads)  # (Bl, H, Tq, Dh)

    dropout = parts.attention_dropout if parts.query.training else 0.0
    context = F.scaled_dot_product_attention(query, key, value, attn_mask=context_mask, dropout_p=dropout)
    context = _merge_heads(context).reshape(plan.num_examples * plan.num_queries, width)  # (Bl*Tq, D)
    context = context.index_select(0, plan.slot_index)  # (N, D)

    updated = _attention_output_and_feed_forward(parts, context, active_states)  # (N, D)
    if torch.is_grad_enabled():
        flat_states = flat_states.index_copy(0, plan.token_index, updated)
    else:
        # Without autograd the states can be updated in place; the caller owns them.
        flat_states.index_copy_(0, plan.token_index, updated)
    return flat_states.view(batch_size, seq_len, width)
