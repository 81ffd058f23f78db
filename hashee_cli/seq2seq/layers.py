"""The token-level exit layer loops of a seq2seq encoder and decoder, with an optional key/value cache.

Dimension legend used in shape comments:
    B  batch size (rows: examples, or hypotheses in beam search)
    S  source length            T  decoder positions fed in this call
    P  decoder positions already in the cache (0 without a cache)
    D  hidden size              H  attention heads, Dh = head size
    L  number of layers         N  active tokens at one layer (over the batch)
    Bl rows with at least one active token at one layer
    Tq most active tokens of any one row at one layer

A token is active at layer l (1-based) when its exit layer is >= l. At every
layer, keys and values come from every token, active or exited, so exited
tokens keep serving as context with the state they had when they left.
Queries, the residual blocks, cross-attention and the feed-forward block run
for active tokens only. Padding has exit layer 0 and is masked out as a key.

In the decoder, causality makes this consistent with a key/value cache. The
keys and values of a position at layer l depend only on positions up to it.
So a step that feeds one new token appends that token's keys and values at
every layer, computed from its frozen state above its exit layer, and gives
the same result as recomputing the whole prefix.

Forms: ``dense`` runs every token through every layer (the full model);
``masked`` runs layers densely and keeps the old state of exited tokens
(training); ``gathered`` runs queries, cross-attention and feed-forward only
on the active tokens (inference, where the savings come from). ``gathered``
and ``masked`` give the same states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import EncoderDecoderCache

from hashee_cli.errors import HasheeError
from hashee_cli.modeling.exit_layers import LayerPlan, plan_layers
from hashee_cli.seq2seq.architectures import AttentionParts, PositionBias, Seq2SeqLayerParts

FORMS = ("dense", "masked", "gathered")


def _split_heads(states: torch.Tensor, num_heads: int) -> torch.Tensor:
    # (B, T, W) -> (B, H, T, W / H)
    batch, length, width = states.shape
    return states.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    # (B, H, T, Dh) -> (B, T, H * Dh)
    batch, heads, length, head_dim = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * head_dim)


@dataclass
class AttentionContext:
    """Keys and values (B, H, Tk, Dh) and the mask that one attention block reads.

    ``mask`` is boolean (True where a key may be read) of shape (B, 1, 1 or
    Tq, Tk), or an additive float bias of shape (B, H, Tq, Tk).
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor


def project_keys_values(attention: AttentionParts, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return keys and values (B, H, T, Dh) of states (B, T, D)."""
    return _split_heads(attention.key(states), attention.num_heads), _split_heads(attention.value(states), attention.num_heads)


def attention_mask(
    key_valid: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    causal: bool,
    position_bias: PositionBias | None,
) -> torch.Tensor:
    """Build the mask of one attention: key_valid (B, Tk), query_positions (B or 1, Tq), key_positions (Tk,)."""
    allowed = key_valid[:, None, None, :]  # (B, 1, 1, Tk)
    if causal:
        allowed = allowed & (key_positions.view(1, 1, 1, -1) <= query_positions[:, None, :, None])  # (B, 1, Tq, Tk)
    if position_bias is None:
        return allowed
    bias = position_bias(query_positions, key_positions)  # (B or 1, H, Tq, Tk)
    return torch.where(allowed, bias, torch.finfo(bias.dtype).min)  # (B, H, Tq, Tk)


@dataclass
class QueryBlock:
    """The position of each of the N active tokens of a layer in the zero-padded query block of its attention.

    Attention needs queries grouped by row, so the block has ``rows`` rows of
    ``num_queries`` slots. ``positions`` (rows, Tq) is each slot's sequence
    position. Padding slots get the last position, so that under a causal
    mask they still read at least one key. Their outputs are dropped.
    """

    slot_index: torch.Tensor
    rows: int
    num_queries: int
    positions: torch.Tensor

    def pack(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, W) -> (rows, Tq, W), zeros in padding slots."""
        block = tokens.new_zeros(self.rows * self.num_queries, tokens.shape[-1])
        return block.index_copy(0, self.slot_index, tokens).view(self.rows, self.num_queries, -1)

    def unpack(self, block: torch.Tensor) -> torch.Tensor:
        """(rows, Tq, W) -> (N, W)."""
        return block.reshape(self.rows * self.num_queries, -1).index_select(0, self.slot_index)


def query_block(plan: LayerPlan, length: int, all_rows: bool = False, batch_size: int | None = None) -> QueryBlock:
    """Return the query block of a layer's plan over sequences of ``length`` positions.

    The block has one row per example with active tokens (Bl rows), or with
    ``all_rows`` one row per example of the batch (``batch_size`` rows).
    """
    slot_index = plan.slot_index
    rows = plan.num_examples
    if all_rows:
        # Row r of the compact block is example example_index[r] of the batch.
        row, rank = slot_index // plan.num_queries, slot_index % plan.num_queries  # each (N,)
        slot_index = plan.example_index.index_select(0, row) * plan.num_queries + rank
        rows = batch_size
    positions = torch.full((rows * plan.num_queries,), length - 1, dtype=torch.long, device=slot_index.device)
    positions = positions.index_copy(0, slot_index, plan.token_index % length)  # (rows*Tq,)
    return QueryBlock(slot_index, rows, plan.num_queries, positions.view(rows, plan.num_queries))


def _attend(
    attention: AttentionParts, states: torch.Tensor, context: AttentionContext, training: bool, block: QueryBlock | None
) -> torch.Tensor:
    """Attend from query states to the context and apply the output projection.

    states are (B, Tq, D) without a block, or the N active tokens (N, D)
    with one; the result has the same shape.
    """
    query = attention.query(states)  # (B, Tq, W) or (N, W)
    if block is not None:
        query = block.pack(query)  # (rows, Tq, W)
    dropout = attention.dropout if training else 0.0
    output = F.scaled_dot_product_attention(
        _split_heads(query, attention.num_heads),  # (rows, H, Tq, Dh)
        context.keys,
        context.values,
        attn_mask=context.mask,
        dropout_p=dropout,
        scale=attention.scale,
    )
    output = _merge_heads(output)  # (rows, Tq, W)
    if block is not None:
        output = block.unpack(output)  # (N, W)
    return attention.output(output)


def _residual(parts: Seq2SeqLayerParts, norm, states: torch.Tensor, sublayer) -> torch.Tensor:
    training = parts.training
    if parts.pre_norm:
        return states + F.dropout(sublayer(norm(states)), parts.residual_dropout, training)
    return norm(states + F.dropout(sublayer(states), parts.residual_dropout, training))


def run_layer(
    parts: Seq2SeqLayerParts,
    states: torch.Tensor,
    self_context: AttentionContext,
    cross_context: AttentionContext | None,
    block: QueryBlock | None = None,
) -> torch.Tensor:
    """Run one layer on query states against precomputed contexts.

    states are (B, Tq, D), or with a ``block`` the N active tokens (N, D).
    Only the attention groups those into rows. Projections, norms and the
    feed-forward block run on the N tokens alone.
    """
    training = parts.training
    states = _residual(
        parts, parts.self_attention_norm, states, lambda x: _attend(parts.self_attention, x, self_context, training, block)
    )
    if cross_context is not None:
        states = _residual(
            parts,
            parts.cross_attention_norm,
            states,
            lambda x: _attend(parts.cross_attention, x, cross_context, training, block),
        )
    return _residual(parts, parts.feed_forward_norm, states, parts.feed_forward)


def self_attention_input(parts: Seq2SeqLayerParts, states: torch.Tensor) -> torch.Tensor:
    """Return what keys and values are projected from: the states, normalised first in pre-norm layers."""
    return parts.self_attention_norm(states) if parts.pre_norm else states


def _gather_active(states: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
    batch, length, width = states.shape
    return states.reshape(batch * length, width).index_select(0, plan.token_index)  # (N, D)


def _scatter_active(states: torch.Tensor, plan: LayerPlan, updated: torch.Tensor) -> torch.Tensor:
    batch, length, width = states.shape
    flat = states.reshape(batch * length, width).index_copy(0, plan.token_index, updated)  # (B*T, D)
    return flat.view(batch, length, width)


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise HasheeError(f"unknown forward form {form!r}; use {', '.join(FORMS)}")


def run_encoder(
    layers: list[Seq2SeqLayerParts],
    states: torch.Tensor,
    attention_mask_2d: torch.Tensor,
    exit_layers: torch.Tensor,
    form: str,
    position_bias: PositionBias | None = None,
) -> torch.Tensor:
    """Run the encoder layers on states (B, S, D) with exit layers (B, S); padding has exit layer 0."""
    _check_form(form)
    length = states.shape[1]
    positions = torch.arange(length, device=states.device)
    key_valid = attention_mask_2d.bool()

    if form != "gathered":
        mask = attention_mask(key_valid, positions.unsqueeze(0), positions, causal=False, position_bias=position_bias)
        for depth, parts in enumerate(layers, start=1):
            keys, values = project_keys_values(parts.self_attention, self_attention_input(parts, states))
            updated = run_layer(parts, states, AttentionContext(keys, values, mask), None)
            states = updated if form == "dense" else torch.where((exit_layers >= depth).unsqueeze(-1), updated, states)
        return states

    for parts, plan in zip(layers, plan_layers(exit_layers, len(layers))):
        if plan.token_index.numel() == 0:
            break  # later layers have no active tokens either
        # Keys and values only for the Bl examples that still have an active token.
        rows = None if plan.num_examples == states.shape[0] else plan.example_index
        context_states = states if rows is None else states.index_select(0, rows)  # (Bl, S, D)
        keys, values = project_keys_values(parts.self_attention, self_attention_input(parts, context_states))
        block = query_block(plan, length)
        valid = key_valid if rows is None else key_valid.index_select(0, rows)  # (Bl, S)
        mask = attention_mask(valid, block.positions, positions, causal=False, position_bias=position_bias)
        updated = run_layer(parts, _gather_active(states, plan), AttentionContext(keys, values, mask), None, block)  # (N, D)
        states = _scatter_active(states, plan, updated)
    return states


@dataclass
class DecoderInputs:
    """The decoder's view of the source and of earlier positions for one call.

    ``encoder_states`` (B, S, D) and ``encoder_valid`` (B, S) describe the
    source. ``key_valid`` (B, P + T) marks the decoder positions that may be
    read as keys, earlier ones first. ``cache`` contains the self-attention keys
    and values of the P earlier positions and the cross-attention keys and
    values of the source; without it P is 0.
    """

    encoder_states: torch.Tensor
    encoder_valid: torch.Tensor
    key_valid: torch.Tensor
    cache: EncoderDecoderCache | None = None

    @property
    def past_length(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0


def _cross_keys_values(
    parts: Seq2SeqLayerParts, index: int, inputs: DecoderInputs
) -> tuple[torch.Tensor, torch.Tensor]:
    cache = inputs.cache
    if cache is not None and cache.is_updated.get(index):
        layer = cache.cross_attention_cache.layers[index]
        return layer.keys, layer.values
    keys, values = project_keys_values(parts.cross_attention, inputs.encoder_states)  # (B, H, S, Dh)
    if cache is not None:
        cache.cross_attention_cache.update(keys, values, index)
        cache.is_updated[index] = True
    return keys, values


def run_decoder(
    layers: list[Seq2SeqLayerParts],
    states: torch.Tensor,
    exit_layers: torch.Tensor,
    inputs: DecoderInputs,
    form: str,
    position_bias: PositionBias | None = None,
) -> torch.Tensor:
    """Run the decoder layers on the new positions' states (B, T, D) with exit layers (B, T).

    With a cache, the new positions' keys and values are appended at every
    layer, active or not, and the P earlier positions are read from it.
    """
    _check_form(form)
    past_length = inputs.past_length
    length = states.shape[1]
    device = states.device
    key_positions = torch.arange(past_length + length, device=device)  # (P+T,)
    cross_mask = inputs.encoder_valid.bool()[:, None, None, :]  # (B, 1, 1, S)
    plans = plan_layers(exit_layers, len(layers)) if form == "gathered" else None

    for index, parts in enumerate(layers):
        keys, values = project_keys_values(parts.self_attention, self_attention_input(parts, states))  # (B, H, T, Dh)
        if inputs.cache is not None:
            keys, values = inputs.cache.self_attention_cache.update(keys, values, index)  # (B, H, P+T, Dh)
        cross_keys, cross_values = _cross_keys_values(parts, index, inputs)

        if form != "gathered":
            query_positions = past_length + torch.arange(length, device=device).unsqueeze(0)  # (1, T)
            mask = attention_mask(inputs.key_valid, query_positions, key_positions, causal=True, position_bias=position_bias)
            updated = run_layer(
                parts,
                states,
                AttentionContext(keys, values, mask),
                AttentionContext(cross_keys, cross_values, cross_mask),
            )
            active = (exit_layers > index).unsqueeze(-1)  # (B, T, 1): active at depth index + 1
            states = updated if form == "dense" else torch.where(active, updated, states)
            continue

        plan = plans[index]
        if plan.token_index.numel() == 0:
            continue  # keys and values are cached above; no query runs at this layer
        # The attention's query block keeps every row of the batch: copying the cached keys and values
        # of the Bl active rows out would move more memory than the idle rows' attention scores cost.
        block = query_block(plan, length, all_rows=True, batch_size=states.shape[0])
        mask = attention_mask(
            inputs.key_valid, past_length + block.positions, key_positions, causal=True, position_bias=position_bias
        )
        updated = run_layer(
            parts,
            _gather_active(states, plan),
            AttentionContext(keys, values, mask),
            AttentionContext(cross_keys, cross_values, cross_mask),
            block,
        )  # (N, D)
        states = _scatter_active(states, plan, updated)
    return states
