"""Training pieces of the early-exit baselines: DeeBERT's second stage and dev scoring of internal classifiers.

DeeBERT trains in two stages: first the backbone with its final classifier
(an ordinary fine-tuning), then, with all of that frozen, the internal
classifiers of layers 1..L-1 on the sum of their cross-entropy losses.
PABEE trains every classifier jointly, weighting layer l's loss by l, which
is what ``MultiExitModel`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hashee_cli.data.encoding import EncodedSplit
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.exit_sweep import layer_scores, record_layer_logits
from hashee_cli.modeling.exit_layers import full_layer
from hashee_cli.modeling.multi_exit import MultiExitModel, MultiExitOutput
from hashee_cli.training import DevEvaluator


class FrozenBackboneExits(nn.Module):
    """Train only the internal classifiers of a MultiExitModel, the rest frozen (DeeBERT's second stage).

    The loss is the sum of the cross-entropy losses of layers 1..L-1. The
    backbone runs without autograd, and the last layer, whose classifier is
    frozen too, is skipped.
    """

    def __init__(self, model: MultiExitModel):
        super().__init__()
        self.multi_exit = model
        for parameter in model.model.parameters():
            parameter.requires_grad_(False)

    @property
    def config(self):
        return self.multi_exit.config

    @property
    def num_layers(self) -> int:
        return self.multi_exit.num_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused,
    ) -> MultiExitOutput:
        model = self.multi_exit
        hidden = []
        with torch.no_grad():
            hidden_states = model.architecture.embed(model.model, input_ids, token_type_ids)  # (B, T, D)
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            for parts in model.layer_parts[:-1]:
                hidden_states = full_layer(parts, hidden_states, key_mask)
                hidden.append(hidden_states)
        all_logits = torch.stack([model.layer_logits(layer, states) for layer, states in enumerate(hidden, start=1)])  # (L-1, B[, C])

        loss = None
        if labels is not None:
            if model.is_regression:
                losses = [F.mse_loss(logits, labels.to(logits.dtype)) for logits in all_logits]
            else:
                losses = [F.cross_entropy(logits, labels) for logits in all_logits]
            loss = torch.stack(losses).sum()
        exit_layers = attention_mask.long() * (model.num_layers - 1)
        return MultiExitOutput(logits=all_logits[-1], all_logits=all_logits, exit_layers=exit_layers, loss=loss)


def exit_dev_evaluator(
    model: MultiExitModel,
    dev_split: EncodedSplit,
    task: TaskSpec,
    batch_size: int,
    pad_token_id: int,
    layers: range,
) -> DevEvaluator:
    """Return a dev scorer that averages each metric over the classifiers of ``layers`` (1-based).

    The record also keeps the main metric of every layer, as
    ``<metric>_layer_<l>``. The mean exit layer is the last layer because the
    pass runs every layer.
    """

    def evaluate(_: nn.Module) -> tuple[dict[str, float], float]:
        record = record_layer_logits(model, dev_split, batch_size, pad_token_id)
        per_layer = layer_scores(task, record, dev_split.labels)
        chosen = [per_layer[layer - 1] for layer in layers]
        metrics = {name: sum(scores[name] for scores in chosen) / len(chosen) for name in task.metrics}
        for layer, scores in enumerate(per_layer, start=1):
            metrics[f"{task.main_metric}_layer_{layer}"] = scores[task.main_metric]
        return metrics, float(model.num_layers)

    return evaluate
