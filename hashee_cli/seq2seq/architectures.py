"""Per-family access to the parts of a Hugging Face encoder-decoder that seq2seq HashEE runs itself.

HashEE replaces the layer loops of the encoder and the decoder, so it needs
each layer's projections, norms and feed-forward block as separate modules,
plus the embeddings, the final norms and the language-model head. Modules
are referenced, never copied, so ``save_pretrained`` writes the trained
weights unchanged and a checkpoint loads in plain transformers.

Supported families:
  - BART (``BartForConditionalGeneration``): post-LayerNorm, learned positions;
  - T5 (``T5ForConditionalGeneration``): pre-norm (RMS norm), relative
    position bias from the first layer, unscaled dot products;
  - bert2bert (``EncoderDecoderModel`` with a BERT encoder and a BERT decoder
    with cross-attention): post-LayerNorm, absolute positions.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from hashee_cli.errors import HasheeError

PositionBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttentionParts:
    """The projections of one attention block.

    ``scale`` multiplies the query-key dot products; None means 1/sqrt(head
    size). ``dropout`` applies to the attention probabilities in training.
    """

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    num_heads: int
    scale: float | None
    dropout: float


@dataclass
class Seq2SeqLayerParts:
    """The modules of one encoder or decoder layer, in the order they run.

    A layer is a chain of residual blocks (self-attention, cross-attention in
    the decoder, feed-forward). Post-norm layers normalise after the residual
    sum; pre-norm layers normalise the block's input. ``feed_forward`` maps
    (..., D) to (..., D) without the residual; ``feed_forward_linears`` lists
    its matrices for the cost model.
    """

    self_attention: AttentionParts
    self_attention_norm: nn.Module
    feed_forward: Callable[[torch.Tensor], torch.Tensor]
    feed_forward_norm: nn.Module
    feed_forward_linears: tuple[nn.Linear, ...]
    residual_dropout: float
    pre_norm: bool
    cross_attention: AttentionParts | None = None
    cross_attention_norm: nn.Module | None = None

    @property
    def training(self) -> bool:
        return self.self_attention.query.training


class Seq2SeqArchitecture:
    """How to reach the embeddings, layers, norms and head of one encoder-decoder family."""

    name: str = ""

    def matches(self, config: PretrainedConfig) -> bool:
        raise NotImplementedError

    def depths(self, config: PretrainedConfig) -> tuple[int, int]:
        """Return the number of (encoder, decoder) layers."""
        raise NotImplementedError

    def encoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        raise NotImplementedError

    def decoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        raise NotImplementedError

    def embed_source(self, model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the encoder's input states (B, S, D)."""
        raise NotImplementedError

    def finish_source(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return what cross-attention reads from the encoder's last states (B, S, D)."""
        return hidden_states

    def embed_target(self, model: PreTrainedModel, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        """Return the decoder's input states (B, T, D) for tokens at positions past_length, past_length + 1, ..."""
        raise NotImplementedError

    def logits(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return vocabulary logits (..., V) from the decoder's last states (..., D)."""
        raise NotImplementedError

    def head_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        """Return the matrices that the head applies to each decoder state, for the cost model."""
        raise NotImplementedError

    def bridge_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        """Return matrices applied to every encoder state before cross-attention, for the cost model."""
        return []

    def source_position_bias(self, model: PreTrainedModel) -> PositionBias | None:
        """Return a function of (query positions (Bq, Tq), key positions (Tk,)) -> bias (Bq, H, Tq, Tk), or None."""
        return None

    def target_position_bias(self, model: PreTrainedModel) -> PositionBias | None:
        return None

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        """Keep the first ``num_layers`` layers of the encoder and of the decoder."""
        raise NotImplementedError

    def max_positions(self, model: PreTrainedModel) -> tuple[int | None, int | None]:
        """Return the most (source, target) positions the embeddings hold; None where positions are relative."""
        limit = model.config.max_position_embeddings
        return limit, limit


def _drop(states: torch.Tensor, probability: float, training: bool) -> torch.Tensor:
    return F.dropout(states, probability, training) if probability > 0 else states


class BartFamily(Seq2SeqArchitecture):
    name = "bart"

    def matches(self, config: PretrainedConfig) -> bool:
        return config.model_type == "bart"

    def depths(self, config: PretrainedConfig) -> tuple[int, int]:
        return config.encoder_layers, config.decoder_layers

    def _layer(self, layer: nn.Module, cross: bool) -> Seq2SeqLayerParts:
        def attention(module: nn.Module) -> AttentionParts:
            return AttentionParts(
                module.q_proj, module.k_proj, module.v_proj, module.out_proj, module.num_heads, None, module.dropout
            )

        def feed_forward(states: torch.Tensor) -> torch.Tensor:
            inner = layer.activation_fn(layer.fc1(states))
            return layer.fc2(_drop(inner, layer.activation_dropout, layer.training))

        return Seq2SeqLayerParts(
            self_attention=attention(layer.self_attn),
            self_attention_norm=layer.self_attn_layer_norm,
            feed_forward=feed_forward,
            feed_forward_norm=layer.final_layer_norm,
            feed_forward_linears=(layer.fc1, layer.fc2),
            residual_dropout=layer.dropout,
            pre_norm=False,
            cross_attention=attention(layer.encoder_attn) if cross else None,
            cross_attention_norm=layer.encoder_attn_layer_norm if cross else None,
        )

    def encoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        return [self._layer(layer, cross=False) for layer in model.model.encoder.layers]

    def decoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        return [self._layer(layer, cross=True) for layer in model.model.decoder.layers]

    def embed_source(self, model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        encoder = model.model.encoder
        states = encoder.embed_tokens(input_ids) + encoder.embed_positions(input_ids)
        return _drop(encoder.layernorm_embedding(states), encoder.dropout, encoder.training)

    def embed_target(self, model: PreTrainedModel, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        decoder = model.model.decoder
        states = decoder.embed_tokens(input_ids) + decoder.embed_positions(input_ids, past_length)
        return _drop(decoder.layernorm_embedding(states), decoder.dropout, decoder.training)

    def logits(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        return model.lm_head(hidden_states) + model.final_logits_bias

    def head_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        return [model.lm_head]

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        del model.model.encoder.layers[num_layers:]
        del model.model.decoder.layers[num_layers:]
        model.config.encoder_layers = num_layers
        model.config.decoder_layers = num_layers


class T5Family(Seq2SeqArchitecture):
    name = "t5"

    def matches(self, config: PretrainedConfig) -> bool:
        return config.model_type == "t5"

    def depths(self, config: PretrainedConfig) -> tuple[int, int]:
        return config.num_layers, config.num_decoder_layers

    def _layer(self, block: nn.Module, cross: bool) -> Seq2SeqLayerParts:
        def attention(module: nn.Module) -> AttentionParts:
            # T5 folds the 1/sqrt(d) factor into its initialisation and never scales the dot products.
            return AttentionParts(module.q, module.k, module.v, module.o, module.n_heads, 1.0, module.dropout)

        feed_forward = block.layer[-1]
        dense = feed_forward.DenseReluDense
        return Seq2SeqLayerParts(
            self_attention=attention(block.layer[0].SelfAttention),
            self_attention_norm=block.layer[0].layer_norm,
            feed_forward=dense,
            feed_forward_norm=feed_forward.layer_norm,
            feed_forward_linears=tuple(module for module in dense.modules() if isinstance(module, nn.Linear)),
            residual_dropout=feed_forward.dropout.p,
            pre_norm=True,
            cross_attention=attention(block.layer[1].EncDecAttention) if cross else None,
            cross_attention_norm=block.layer[1].layer_norm if cross else None,
        )

    def encoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        return [self._layer(block, cross=False) for block in model.encoder.block]

    def decoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        return [self._layer(block, cross=True) for block in model.decoder.block]

    def embed_source(self, model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        return model.encoder.dropout(model.encoder.embed_tokens(input_ids))

    def finish_source(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        return model.encoder.dropout(model.encoder.final_layer_norm(hidden_states))

    def embed_target(self, model: PreTrainedModel, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        # T5 has no absolute positions; the relative bias carries them.
        return model.decoder.dropout(model.decoder.embed_tokens(input_ids))

    def logits(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = model.decoder.dropout(model.decoder.final_layer_norm(hidden_states))
        if model.config.scale_decoder_outputs:
            hidden_states = hidden_states * model.config.d_model**-0.5
        return model.lm_head(hidden_states)

    def head_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        return [model.lm_head]

    @staticmethod
    def _relative_bias(attention: nn.Module, bidirectional: bool) -> PositionBias:
        def bias(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
            relative = key_positions.view(1, 1, -1) - query_positions.unsqueeze(-1)  # (Bq, Tq, Tk)
            buckets = attention._relative_position_bucket(
                relative,
                bidirectional=bidirectional,
                num_buckets=attention.relative_attention_num_buckets,
                max_distance=attention.relative_attention_max_distance,
            )
            return attention.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (Bq, H, Tq, Tk)

        return bias

    def source_position_bias(self, model: PreTrainedModel) -> PositionBias:
        # Only the first layer owns the bias table; every layer reuses it.
        return self._relative_bias(model.encoder.block[0].layer[0].SelfAttention, bidirectional=True)

    def target_position_bias(self, model: PreTrainedModel) -> PositionBias:
        return self._relative_bias(model.decoder.block[0].layer[0].SelfAttention, bidirectional=False)

    def max_positions(self, model: PreTrainedModel) -> tuple[int | None, int | None]:
        return None, None

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        del model.encoder.block[num_layers:]
        del model.decoder.block[num_layers:]
        model.config.num_layers = num_layers
        model.config.num_decoder_layers = num_layers


class Bert2BertFamily(Seq2SeqArchitecture):
    """``EncoderDecoderModel`` whose encoder is a ``BertModel`` and decoder a ``BertLMHeadModel``."""

    name = "bert2bert"

    def matches(self, config: PretrainedConfig) -> bool:
        return (
            config.model_type == "encoder-decoder"
            and config.encoder.model_type == "bert"
            and config.decoder.model_type == "bert"
        )

    def depths(self, config: PretrainedConfig) -> tuple[int, int]:
        return config.encoder.num_hidden_layers, config.decoder.num_hidden_layers

    @staticmethod
    def _layer(layer: nn.Module, cross: bool) -> Seq2SeqLayerParts:
        def attention(block: nn.Module) -> AttentionParts:
            inner = block.self
            return AttentionParts(
                inner.query, inner.key, inner.value, block.output.dense, inner.num_attention_heads, None, inner.dropout.p
            )

        def feed_forward(states: torch.Tensor) -> torch.Tensor:
            return layer.output.dense(layer.intermediate(states))

        return Seq2SeqLayerParts(
            self_attention=attention(layer.attention),
            self_attention_norm=layer.attention.output.LayerNorm,
            feed_forward=feed_forward,
            feed_forward_norm=layer.output.LayerNorm,
            feed_forward_linears=(layer.intermediate.dense, layer.output.dense),
            residual_dropout=layer.output.dropout.p,
            pre_norm=False,
            cross_attention=attention(layer.crossattention) if cross else None,
            cross_attention_norm=layer.crossattention.output.LayerNorm if cross else None,
        )

    def encoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        return [self._layer(layer, cross=False) for layer in model.encoder.encoder.layer]

    def decoder_layers(self, model: PreTrainedModel) -> list[Seq2SeqLayerParts]:
        layers = model.decoder.bert.encoder.layer
        if not all(hasattr(layer, "crossattention") for layer in layers):
            raise HasheeError("the bert2bert decoder has no cross-attention; build it with add_cross_attention=True")
        return [self._layer(layer, cross=True) for layer in layers]

    def embed_source(self, model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        return model.encoder.embeddings(input_ids=input_ids)

    def finish_source(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        # Encoders wider or narrower than the decoder get a learned projection.
        projection = getattr(model, "enc_to_dec_proj", None)
        return projection(hidden_states) if projection is not None else hidden_states

    def bridge_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        projection = getattr(model, "enc_to_dec_proj", None)
        return [projection] if projection is not None else []

    def embed_target(self, model: PreTrainedModel, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        return model.decoder.bert.embeddings(input_ids=input_ids, cache_length=past_length)

    def logits(self, model: PreTrainedModel, hidden_states: torch.Tensor) -> torch.Tensor:
        return model.decoder.cls(hidden_states)

    def head_linears(self, model: PreTrainedModel) -> list[nn.Linear]:
        predictions = model.decoder.cls.predictions
        return [predictions.transform.dense, predictions.decoder]

    def max_positions(self, model: PreTrainedModel) -> tuple[int | None, int | None]:
        return model.config.encoder.max_position_embeddings, model.config.decoder.max_position_embeddings

    def truncate(self, model: PreTrainedModel, num_layers: int) -> None:
        del model.encoder.encoder.layer[num_layers:]
        del model.decoder.bert.encoder.layer[num_layers:]
        model.config.encoder.num_hidden_layers = num_layers
        model.config.decoder.num_hidden_layers = num_layers


FAMILIES: list[Seq2SeqArchitecture] = [BartFamily(), T5Family(), Bert2BertFamily()]


def seq2seq_architecture_for(config: PretrainedConfig) -> Seq2SeqArchitecture:
    """Return the adapter for an encoder-decoder config, suggesting a near match on a typo."""
    for family in FAMILIES:
        if family.matches(config):
            return family
    model_type = config.model_type
    if model_type == "encoder-decoder":
        model_type = f"encoder-decoder ({config.encoder.model_type} encoder, {config.decoder.model_type} decoder)"
    known = ["bart", "t5", "encoder-decoder (bert encoder, bert decoder)"]
    close = difflib.get_close_matches(config.model_type, ["bart", "t5"], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise HasheeError(
        f"model type {model_type} is not supported for seq2seq token-level exit{hint}; supported: {', '.join(known)}"
    )
