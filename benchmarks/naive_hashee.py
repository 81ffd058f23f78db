"""A reference HashEE forward that loops over examples in Python, as research code often does.

It computes the same math as the gathered form (keys and values from every
token, queries and the feed-forward block for active tokens only) one
example at a time, with boolean indexing that synchronises with the device
at every layer. The benchmark times it against the vectorised gathered form
to show what vectorisation gains; it is not part of the library.
"""

from __future__ import annotations

import math

import torch

from hashee_cli.modeling.model import HashEEModel


def naive_forward(
    model: HashEEModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Return logits (B, C) of a right-padded batch, running each example alone."""
    all_logits = []
    for row in range(input_ids.size(0)):
        length = int(attention_mask[row].sum())
        ids = input_ids[row : row + 1, :length]  # (1, n)
        types = None if token_type_ids is None else token_type_ids[row : row + 1, :length]
        exit_layers = model.assign_exit_layers(ids, attention_mask[row : row + 1, :length])[0]  # (n,)
        hidden = model.architecture.embed(model.model, ids, types)[0]  # (n, D)

        for depth, parts in enumerate(model.layer_parts, start=1):
            active = exit_layers >= depth  # (n,)
            if not active.any():
                break
            heads = parts.num_heads
            head_dim = hidden.size(-1) // heads
            active_states = hidden[active]  # (a, D)
            query = parts.query(active_states).view(-1, heads, head_dim).transpose(0, 1)  # (H, a, Dh)
            key = parts.key(hidden).view(-1, heads, head_dim).transpose(0, 1)  # (H, n, Dh)
            value = parts.value(hidden).view(-1, heads, head_dim).transpose(0, 1)  # (H, n, Dh)
            scores = query @ key.transpose(1, 2) / math.sqrt(head_dim)  # (H, a, n)
            context = (scores.softmax(dim=-1) @ value).transpose(0, 1).reshape(-1, hidden.size(-1))  # (a, D)

            attention_output = parts.attention_norm(parts.attention_output(context) + active_states)
            intermediate = parts.activation(parts.intermediate(attention_output))
            updated = parts.output_norm(parts.output(intermediate) + attention_output)  # (a, D)
            hidden = hidden.clone()
            hidden[active] = updated

        logits = model.architecture.head(model.model, hidden[None])  # (1, C)
        all_logits.append(logits)
    return torch.cat(all_logits)
