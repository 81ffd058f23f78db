"""Per-architecture access to the parts of a Hugging Face encoder that HashEE runs itself.

HashEE replaces the encoder's layer loop, so it needs each layer's
projections, layer norms and feed-forward block as separate modules, plus the
embeddings and the classification head. The modules are referenced, never
copied, so ``save_pretrained`` writes the trained weights unchanged and the
checkpoint loads in plain transformers.

BERT, RoBERTa (and XLM-R, CamemBERT), ELECTRA and DistilBERT are supported;
all are post-LayerNorm encoders with the same layer maths.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from hashee_cli.errors import HasheeError


@dataclass
class LayerParts:
    """The modules of one post-LayerNorm transformer layer, in the order they run."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    num_heads: int
    attention_dropout: float
    attention_output: nn.Linear
    attention_output_dropout: nn.Module
    attention_norm: nn.LayerNorm
    intermediate: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    output: nn.Linear
    output_dropout: nn.Module
    output_norm: nn.LayerNorm


class Architecture:
    """How to reach the embeddings, layers and head of one model family."""

    model_types: tuple[str, ...] = ()
    base_prefix: str = ""

    def base(self, model: PreTrainedModel) -> nn.Module:
        return getattr(model, self.base_prefix)

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Return the input embeddings, shape (batch, seq_len, hidden)."""
        return self.base(model).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        attention = layer.attention
        return LayerParts(
            query=attention.self.query,
            key=attention.self.key,
            value=attention.self.value,
            num_heads=attention.self.num_attention_heads,
            attention_dropout=attention.self.dropout.p,
            attention_output=attention.output.dense,
            attention_output_dropout=attention.output.dropout,
            attention_norm=attention.output.LayerNorm,
            intermediate=layer.intermediate.dense,
            activation=layer.intermediate.intermediate_act_fn,
            output=layer.output.dense,
            output_dropout=layer.output.dropout,
            output_norm=layer.output.LayerNorm,
        )

    def head(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return logits (batch, num_labels) from the last hidden states (batch, seq_len, hidden)."""
        return model.classifier(hidden_states)

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        """Keep only the first ``num_layers`` layers, in the module and in the saved config."""
        layers = self.layers(model)
        del layers[num_layers:]
        model.config.num_hidden_layers = num_layers

    def num_layers(self, model: PreTrainedModel) -> int:
        return len(self.layers(model))


class BertArchitecture(Architecture):
    model_types = ("bert",)
    base_prefix = "bert"

    def head(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        # BERT pools the [CLS] state through a tanh layer before the classifier.
        pooled = self.base(model).pooler(hidden_states)
        return model.classifier(model.dropout(pooled))


class RobertaArchitecture(Architecture):
    # RobertaClassificationHead reads the first (<s>) state itself.
    model_types = ("roberta", "xlm-roberta", "camembert")
    base_prefix = "roberta"


class ElectraArchitecture(Architecture):
    model_types = ("electra",)
    base_prefix = "electra"

    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        base = self.base(model)
        hidden_states = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        # ELECTRA's embedding size may differ from the hidden size; a linear layer maps between them.
        if hasattr(base, "embeddings_project"):
            hidden_states = base.embeddings_project(hidden_states)
        return hidden_states


class DistilBertArchitecture(Architecture):
    model_types = ("distilbert",)
    base_prefix = "distilbert"

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return self.base(model).transformer.layer

    def embed(self, model: PreTrainedModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        # DistilBERT has no segment embeddings.
        return self.base(model).embeddings(input_ids)

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        attention = layer.attention
        return LayerParts(
            query=attention.q_lin,
            key=attention.k_lin,
            value=attention.v_lin,
            num_heads=attention.n_heads,
            attention_dropout=attention.dropout.p,
            attention_output=attention.out_lin,
            # DistilBERT applies no dropout between the attention projection and its LayerNorm.
            attention_output_dropout=nn.Identity(),
            attention_norm=layer.sa_layer_norm,
            intermediate=layer.ffn.lin1,
            activation=layer.ffn.activation,
            output=layer.ffn.lin2,
            output_dropout=layer.ffn.dropout,
            output_norm=layer.output_layer_norm,
        )

    def head(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(model.pre_classifier(hidden_states[:, 0]))
        return model.classifier(model.dropout(pooled))

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        super().truncate(model, num_layers)
        model.config.n_layers = num_layers


ARCHITECTURES: list[Architecture] = [
    BertArchitecture(),
    RobertaArchitecture(),
    ElectraArchitecture(),
    DistilBertArchitecture(),
]


def supported_model_types() -> list[str]:
    return [model_type for architecture in ARCHITECTURES for model_type in architecture.model_types]


def architecture_for(model_type: str) -> Architecture:
    """Return the adapter for a config's ``model_type``, suggesting a near match on a typo."""
    for architecture in ARCHITECTURES:
        if model_type in architecture.model_types:
            return architecture
    known = supported_model_types()
    close = difflib.get_close_matches(model_type, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise HasheeError(
        f"model type {model_type!r} is not supported for token-level exit{hint}; "
        f"supported encoder types: {', '.join(known)}"
    )
