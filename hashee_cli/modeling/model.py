"""HashEEModel: a Hugging Face sequence classifier whose tokens exit at hashed layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from hashee_cli.backbones import load_config, resolve_model_source
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError, ModelNotFoundError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.modeling.architectures import Architecture, architecture_for
from hashee_cli.modeling.exit_layers import ExitLayer, plan_layers

Form = Literal["auto", "masked", "gathered", "dense"]


@dataclass
class HashEEOutput:
    """Model outputs.

    ``logits`` is (B, num_labels) for classification and (B,) for regression,
    one value per example. ``exit_layers`` is (B, T), 0 for padding.
    """

    logits: torch.Tensor
    exit_layers: torch.Tensor
    loss: torch.Tensor | None = None


class HashEEModel(nn.Module):
    """Wrap a ``*ForSequenceClassification`` model and run its encoder with token-level exit.

    Without an ``assigner`` every token runs all layers: the ordinary model.
    Forms of the forward pass:
      - ``masked``: every layer runs densely and exited tokens keep their old
        state (training);
      - ``gathered``: queries and feed-forward run only on active tokens (inference);
      - ``dense``: the plain encoder with no exits (the full model);
      - ``auto``: ``dense`` without an assigner, else ``masked`` in training
        mode and ``gathered`` in eval mode.
    """

    def __init__(self, model: PreTrainedModel, assigner: ExitAssigner | None = None):
        super().__init__()
        self.model = model
        self.assigner = assigner
        self.architecture: Architecture = architecture_for(model.config.model_type)
        self.layer_parts = [self.architecture.layer_parts(layer) for layer in self.architecture.layers(model)]
        self.layers = nn.ModuleList([ExitLayer(parts) for parts in self.layer_parts])
        if assigner is not None and assigner.num_layers != self.num_layers:
            raise HasheeError(
                f"the hash table is for {assigner.num_layers} layers but the model has {self.num_layers}"
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

    def assign_exit_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """Return exit layers (B, T): from the hash table, or the last layer for every token without one."""
        if self.assigner is not None:
            return self.assigner(input_ids, attention_mask, salt=salt)
        return attention_mask.long() * self.num_layers

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        exit_layers: torch.Tensor,
        form: Form,
    ) -> torch.Tensor:
        """Run embeddings and the layer loop; return the last hidden states (B, T, D).

        Exited tokens carry the state of their exit layer. ``form`` must be resolved (not ``auto``).
        """
        hidden_states = self.architecture.embed(self.model, input_ids, token_type_ids)  # (B, T, D)
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T), True where a key may be read

        if form == "dense":
            for layer in self.layers:
                hidden_states = layer(hidden_states, key_mask)
        elif form == "masked":
            for depth, layer in enumerate(self.layers, start=1):
                hidden_states = layer(hidden_states, key_mask, exit_layers >= depth)  # (B, T) active tokens
        elif form == "gathered":
            for layer, plan in zip(self.layers, plan_layers(exit_layers, self.num_layers)):
                hidden_states = layer(hidden_states, key_mask, plan)
        else:
            raise HasheeError(f"unknown forward form {form!r}; use auto, masked, gathered or dense")
        return hidden_states

    def resolve_form(self, form: Form, training: bool | None = None) -> Form:
        """Return the form that ``auto`` stands for in the current mode, or in ``training`` mode when given."""
        if form != "auto":
            return form
        if self.assigner is None:
            return "dense"
        training = self.training if training is None else training
        return "masked" if training else "gathered"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        exit_layers: torch.Tensor | None = None,
        form: Form = "auto",
        salt: int = 0,
    ) -> HashEEOutput:
        if exit_layers is None:
            exit_layers = self.assign_exit_layers(input_ids, attention_mask, salt=salt)
        hidden_states = self.encode(input_ids, attention_mask, token_type_ids, exit_layers, self.resolve_form(form))

        logits = self.architecture.head(self.model, hidden_states)
        if self.is_regression:
            logits = logits.squeeze(-1)  # (B,)

        loss = None
        if labels is not None:
            if self.is_regression:
                loss = F.mse_loss(logits, labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return HashEEOutput(logits=logits, exit_layers=exit_layers, loss=loss)


def load_backbone_for_task(model_name: str, task: TaskSpec, num_layers: int | None = None) -> PreTrainedModel:
    """Load a pretrained encoder with a new classification (or regression) head for ``task``.

    ``num_layers`` keeps only the first k layers of the backbone.
    """
    config_kwargs = {"num_labels": task.num_labels}
    if task.problem_type == "regression":
        config_kwargs["problem_type"] = "regression"
    else:
        single = task.problem_type == "classification"
        config_kwargs["problem_type"] = "single_label_classification" if single else "multi_label_classification"
        config_kwargs["id2label"] = dict(enumerate(task.labels))
        config_kwargs["label2id"] = {label: index for index, label in enumerate(task.labels)}

    config = load_config(model_name, **config_kwargs)
    architecture = architecture_for(config.model_type)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_source(model_name), config=config)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load weights of model {model_name!r}: {error}") from error

    total = architecture.num_layers(model)
    if num_layers is not None:
        if not 1 <= num_layers <= total:
            raise HasheeError(f"--num-layers must be between 1 and {total} for {model_name} (got {num_layers})")
        architecture.truncate(model, num_layers)
    return model
