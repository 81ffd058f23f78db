"""Turn token ids into exit layers on the device, vectorised over the batch."""

from __future__ import annotations

import torch
from torch import nn

from hashee_cli.hashing.table import HashTable

# Arithmetic for the per-occurrence hash of random-inconsistent tables: a
# multiply-add generator modulo the Mersenne prime 2^31 - 1, so every product
# stays below 2^62 and fits in int64 on any device.
_PRIME = 2_147_483_647
_MULTIPLIERS = (48_271, 69_621, 16_807, 39_373)


def _mix(values: torch.Tensor) -> torch.Tensor:
    for multiplier in _MULTIPLIERS:
        values = (values * multiplier + 12_345) % _PRIME
    return values


class ExitAssigner(nn.Module):
    """Map token ids to 1-based exit layers with a hash table.

    Special tokens always exit at the last layer. Padding gets exit layer 0,
    so it is never active. For a random-inconsistent table each occurrence
    gets a pseudo-random bucket that depends on the seed, the example's tokens,
    the position and a ``salt``, never on the other examples in the batch.
    """

    def __init__(self, table: HashTable, special_token_ids: list[int], vocab_size: int):
        super().__init__()
        self.num_layers = table.num_layers
        self.consistent = table.consistent
        self.seed = int(table.seed or 0)

        lookup = torch.full((vocab_size,), table.default_exit_layer, dtype=torch.long)
        if table.consistent:
            buckets = torch.tensor(table.bucket_by_token_id[:vocab_size], dtype=torch.long)
            exit_layers = torch.tensor(table.exit_layers, dtype=torch.long)
            seen = buckets >= 0
            lookup[: len(buckets)][seen] = exit_layers[buckets[seen]]
        special = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("special_ids", special, persistent=False)
        self.register_buffer("bucket_layers", torch.tensor(table.exit_layers, dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """Return exit layers of shape (batch, seq_len): 1..L for real tokens, 0 for padding."""
        valid = attention_mask.bool()
        if self.consistent:
            exit_layers = self.lookup[input_ids.clamp(0, self.lookup.numel() - 1)]
        else:
            exit_layers = self._inconsistent_layers(input_ids, valid, salt)

        is_special = torch.isin(input_ids, self.special_ids)
        exit_layers = torch.where(is_special, torch.full_like(exit_layers, self.num_layers), exit_layers)
        return exit_layers.masked_fill(~valid, 0)

    def _inconsistent_layers(self, input_ids: torch.Tensor, valid: torch.Tensor, salt: int) -> torch.Tensor:
        # (batch, seq_len) positions 1..T and an order-sensitive digest of each example's tokens.
        positions = torch.arange(1, input_ids.size(1) + 1, device=input_ids.device).expand_as(input_ids)
        token_terms = _mix((input_ids + 1) * positions % _PRIME) * valid
        example_digest = token_terms.sum(dim=1, keepdim=True) % _PRIME

        state = (example_digest + positions * 7_919 + self.seed * 104_729 + salt * 1_299_709) % _PRIME
        buckets = _mix(state) % self.bucket_layers.numel()
        return self.bucket_layers[buckets]
