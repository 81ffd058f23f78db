"""Multi-exit classifiers: an internal classifier after every layer, trained jointly.

The last layer uses the backbone's own classification head; layers 1..L-1
get a new head each (dense + tanh on the first token, dropout, linear). The
joint loss weights layer l's loss by l, so deeper classifiers count more,
as PABEE trains its internal classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from hashee_cli.modeling.architectures import Architecture, architecture_for
from hashee_cli.modeling.exit_layers import ExitLayer

EXIT_HEADS_FILE = "exit_heads.safetensors"


class ExitHead(nn.Module):
    """An internal classifier that reads the first token's hidden state."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(hidden_states[:, 0]))  # (B, D)
        return self.classifier(self.dropout(pooled))  # (B, C)


@dataclass
class MultiExitOutput:
    """``all_logits`` is (L, B, C), or (L, B) for regression; ``logits`` is the last layer's."""

    logits: torch.Tensor
    all_logits: torch.Tensor
    exit_layers: torch.Tensor
    loss: torch.Tensor | None = None


class MultiExitModel(nn.Module):
    """Run every layer densely and classify after each one."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.architecture: Architecture = architecture_for(model.config.model_type)
        self.layer_parts = [self.architecture.layer_parts(layer) for layer in self.architecture.layers(model)]
        self.layers = nn.ModuleList([ExitLayer(parts) for parts in self.layer_parts])
        config = model.config
        hidden_size = getattr(config, "hidden_size", None) or config.dim
        dropout = getattr(config, "hidden_dropout_prob", None) or getattr(config, "dropout", 0.1)
        self.exit_heads = nn.ModuleList(
            [ExitHead(hidden_size, config.num_labels, dropout) for _ in range(self.num_layers - 1)]
        )

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.layer_parts)

    @property
    def is_regression(self) -> bool:
        return self.model.config.problem_type == "regression"

    def layer_logits(self, layer: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return the logits of the classifier after ``layer`` (1-based): (B, C), or (B,) for regression."""
        if layer == self.num_layers:
            logits = self.architecture.head(self.model, hidden_states)
        else:
            logits = self.exit_heads[layer - 1](hidden_states)
        return logits.squeeze(-1) if self.is_regression else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused,
    ) -> MultiExitOutput:
        hidden_states = self.architecture.embed(self.model, input_ids, token_type_ids)  # (B, T, D)
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        all_logits = []
        for layer, exit_layer in enumerate(self.layers, start=1):
            hidden_states = exit_layer(hidden_states, key_mask)
            all_logits.append(self.layer_logits(layer, hidden_states))
        stacked = torch.stack(all_logits)  # (L, B, C) or (L, B)

        loss = None
        if labels is not None:
            weights = torch.arange(1, self.num_layers + 1, dtype=stacked.dtype, device=stacked.device)
            if self.is_regression:
                losses = torch.stack([F.mse_loss(logits, labels.to(logits.dtype)) for logits in stacked])
            else:
                losses = torch.stack([F.cross_entropy(logits, labels) for logits in stacked])
            loss = (weights * losses).sum() / weights.sum()

        exit_layers = attention_mask.long() * self.num_layers
        return MultiExitOutput(logits=stacked[-1], all_logits=stacked, exit_layers=exit_layers, loss=loss)
