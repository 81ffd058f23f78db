"""Sentence-level early exit over a multi-exit model: the real forward and the replay of recorded logits.

Dimension legend used in shape comments:
    B  batch size             T  padded sequence length
    D  hidden size            C  classes (absent for regression)
    L  number of layers       R  examples still running at one layer
    N  examples of a split

``EarlyExitModel`` stops the forward pass per example: after each layer the
examples whose rule fires take that layer's prediction and leave the batch,
and the rest continue. Attention never mixes examples, so an example's
result does not depend on its batch, and any batch size gives the
predictions of batch size 1 (up to floating-point rounding).

``replay_exits`` applies a rule to logits recorded once for every layer and
reproduces the decisions of the real forward, so a sweep over thresholds or
patience costs one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hashee_cli.modeling.exit_rules import ExitRule
from hashee_cli.modeling.multi_exit import MultiExitModel


@dataclass
class EarlyExitOutput:
    """``logits`` (B, C), or (B,) for regression, from each example's exit layer; ``exit_layers`` (B,), 1-based."""

    logits: torch.Tensor
    exit_layers: torch.Tensor


class EarlyExitModel(nn.Module):
    """Run a MultiExitModel layer by layer and let each example leave at the layer its rule picks."""

    def __init__(self, model: MultiExitModel, rule: ExitRule):
        super().__init__()
        self.model = model
        self.rule = rule

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def config(self):
        return self.model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        **unused,
    ) -> EarlyExitOutput:
        model = self.model
        batch_size = input_ids.size(0)
        device = input_ids.device
        hidden_states = model.architecture.embed(model.model, input_ids, token_type_ids)  # (B, T, D)
        token_mask = attention_mask.bool()  # (B, T)

        running = torch.arange(batch_size, device=device)  # (R,) batch rows still running
        exit_layers = torch.zeros(batch_size, dtype=torch.long, device=device)
        logits_out: torch.Tensor | None = None
        state = self.rule.start(batch_size, device)

        # The layer modules, not their parts, so that traces and hooks see one call per layer.
        for layer, exit_layer in enumerate(model.layers, start=1):
            key_mask = token_mask[:, None, None, :]  # (R, 1, 1, T)
            hidden_states = exit_layer(hidden_states, key_mask)
            logits = model.layer_logits(layer, hidden_states)  # (R, C) or (R,)
            if logits_out is None:
                logits_out = logits.new_zeros((batch_size, *logits.shape[1:]))

            if layer == self.num_layers:
                leaving = torch.ones(len(running), dtype=torch.bool, device=device)
            else:
                leaving, state = self.rule.step(state, logits)  # (R,)

            leaving_rows = leaving.nonzero().squeeze(1)
            if leaving_rows.numel() == 0:
                continue
            logits_out[running[leaving_rows]] = logits[leaving_rows]
            exit_layers[running[leaving_rows]] = layer

            staying_rows = (~leaving).nonzero().squeeze(1)
            if staying_rows.numel() == 0:
                break
            running = running[staying_rows]
            state = self.rule.keep(state, staying_rows)
            hidden_states = hidden_states.index_select(0, staying_rows)  # (R', T, D)
            token_mask = token_mask.index_select(0, staying_rows)  # (R', T)
            # Drop the trailing columns that only the exited examples used.
            width = int(token_mask.any(dim=0).nonzero().max()) + 1
            hidden_states = hidden_states[:, :width]  # (R', T', D)
            token_mask = token_mask[:, :width]  # (R', T')

        return EarlyExitOutput(logits=logits_out, exit_layers=exit_layers)


def replay_exits(all_logits: torch.Tensor, rule: ExitRule) -> EarlyExitOutput:
    """Apply ``rule`` to recorded logits (L, N, C) or (L, N) and return each example's exit and prediction.

    The rule's state keeps updating for examples that already left, which
    changes nothing because only the first exit counts.
    """
    num_layers, num_examples = all_logits.shape[:2]
    device = all_logits.device
    exit_layers = torch.full((num_examples,), num_layers, dtype=torch.long, device=device)
    done = torch.zeros(num_examples, dtype=torch.bool, device=device)
    state = rule.start(num_examples, device)
    for layer in range(1, num_layers):
        leaving, state = rule.step(state, all_logits[layer - 1])  # (N,)
        first = leaving & ~done
        exit_layers[first] = layer
        done |= leaving

    # all_logits[exit - 1, n] for every example n.
    index = (exit_layers - 1).view(1, num_examples, *([1] * (all_logits.dim() - 2)))  # (1, N[, 1])
    index = index.expand(1, num_examples, *all_logits.shape[2:])  # (1, N[, C])
    logits = all_logits.gather(0, index).squeeze(0)  # (N[, C])
    return EarlyExitOutput(logits=logits, exit_layers=exit_layers)
