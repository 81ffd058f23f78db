"""HashEESeq2SeqModel: a Hugging Face encoder-decoder whose source and target tokens exit at hashed layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hashee_cli.errors import HasheeError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.seq2seq.architectures import Seq2SeqArchitecture, seq2seq_architecture_for
from hashee_cli.seq2seq.layers import DecoderInputs, run_decoder, run_encoder

# Label value that the loss ignores, as in Hugging Face models.
IGNORE_INDEX = -100


@dataclass
class EncoderOutput:
    """The encoder's result: what cross-attention reads (B, S, D), the source mask and exit layers (B, S)."""

    states: torch.Tensor
    attention_mask: torch.Tensor
    exit_layers: torch.Tensor

    def repeat_rows(self, repeats: int) -> EncoderOutput:
        """Repeat every row ``repeats`` times in place (beam search keeps the beams of an example together)."""
        return EncoderOutput(
            self.states.repeat_interleave(repeats, dim=0),
            self.attention_mask.repeat_interleave(repeats, dim=0),
            self.exit_layers.repeat_interleave(repeats, dim=0),
        )


@dataclass
class Seq2SeqOutput:
    """Teacher-forced outputs: logits (B, T, V), exit layers of source (B, S) and target (B, T), and the loss."""

    logits: torch.Tensor
    encoder_exit_layers: torch.Tensor
    decoder_exit_layers: torch.Tensor
    loss: torch.Tensor | None = None


class HashEESeq2SeqModel(nn.Module):
    """Wrap a ``*ForConditionalGeneration`` (or bert2bert ``EncoderDecoderModel``) and run both stacks with token-level exit.

    Source tokens exit at the layer their id hashes to. Each decoder position
    exits at the layer of the token fed in at that position. Without an
    ``assigner`` every token runs all layers: the ordinary model. Forms as in
    ``hashee_cli.seq2seq.layers``; ``auto`` is ``dense`` without an assigner,
    else ``masked`` in training mode and ``gathered`` in eval mode.
    """

    def __init__(self, model: PreTrainedModel, assigner: ExitAssigner | None = None):
        super().__init__()
        self.model = model
        self.assigner = assigner
        self.architecture: Seq2SeqArchitecture = seq2seq_architecture_for(model.config)
        self.encoder_layers = self.architecture.encoder_layers(model)
        self.decoder_layers = self.architecture.decoder_layers(model)
        if len(self.encoder_layers) != len(self.decoder_layers):
            raise HasheeError(
                f"seq2seq HashEE needs as many encoder as decoder layers (got {len(self.encoder_layers)} and "
                f"{len(self.decoder_layers)}); pass --num-layers to keep the first k layers of both"
            )
        if assigner is not None and assigner.num_layers != self.num_layers:
            raise HasheeError(f"the hash table is for {assigner.num_layers} layers but the model has {self.num_layers}")
        self.source_bias = self.architecture.source_position_bias(model)
        self.target_bias = self.architecture.target_position_bias(model)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.encoder_layers)

    def _token_id(self, name: str) -> int:
        value = getattr(self.model.generation_config, name, None)
        if value is None:
            value = getattr(self.model.config, name, None)
        if isinstance(value, list):
            value = value[0]
        if value is None:
            raise HasheeError(f"the model config has no {name}; set it in config.json")
        return int(value)

    @property
    def decoder_start_token_id(self) -> int:
        return self._token_id("decoder_start_token_id")

    @property
    def eos_token_id(self) -> int:
        return self._token_id("eos_token_id")

    @property
    def pad_token_id(self) -> int:
        return self._token_id("pad_token_id")

    def check_lengths(self, max_source_length: int, max_target_length: int) -> None:
        """Raise HasheeError when a maximum length exceeds the positions the model's embeddings hold."""
        source_limit, target_limit = self.architecture.max_positions(self.model)
        if source_limit is not None and max_source_length > source_limit:
            raise HasheeError(f"--max-seq-length {max_source_length} exceeds the encoder's {source_limit} positions; lower it")
        # The decoder reads the start token and the summary but its last token, so target_limit tokens fit.
        if target_limit is not None and max_target_length > target_limit:
            raise HasheeError(
                f"--max-target-length {max_target_length} exceeds the decoder's {target_limit} positions; lower it"
            )

    def resolve_form(self, form: str) -> str:
        if form != "auto":
            return form
        if self.assigner is None:
            return "dense"
        return "masked" if self.training else "gathered"

    def assign_exit_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return exit layers (B, T): from the hash table, or the last layer for every token without one; 0 for padding."""
        if self.assigner is not None:
            return self.assigner(input_ids, attention_mask)
        return attention_mask.long() * self.num_layers

    def assign_decoder_exit_layers(
        self, decoder_input_ids: torch.Tensor, valid: torch.Tensor, first_position: int = 0
    ) -> torch.Tensor:
        """Return the exit layers (B, T) of decoder positions first_position, first_position + 1, ...

        A position's exit layer depends only on its own token (and, for a
        random-inconsistent table, on its position), never on later tokens,
        so teacher forcing, cached decoding and decoding without a cache
        assign the same layers.
        """
        if self.assigner is None or self.assigner.consistent:
            return self.assign_exit_layers(decoder_input_ids, valid)
        columns = [
            self.assigner(decoder_input_ids[:, column : column + 1], valid[:, column : column + 1], salt=first_position + column)
            for column in range(decoder_input_ids.shape[1])
        ]  # T tensors of shape (B, 1)
        return torch.cat(columns, dim=1)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        exit_layers: torch.Tensor | None = None,
        form: str = "auto",
    ) -> EncoderOutput:
        """Run the encoder on input_ids (B, S); padding is where attention_mask is 0."""
        if exit_layers is None:
            exit_layers = self.assign_exit_layers(input_ids, attention_mask)
        states = self.architecture.embed_source(self.model, input_ids)  # (B, S, D)
        states = run_encoder(self.encoder_layers, states, attention_mask, exit_layers, self.resolve_form(form), self.source_bias)
        return EncoderOutput(self.architecture.finish_source(self.model, states), attention_mask, exit_layers)

    def new_cache(self) -> EncoderDecoderCache:
        """Return an empty key/value cache for incremental decoding."""
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: EncoderOutput,
        key_valid: torch.Tensor,
        exit_layers: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        form: str = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder on new positions decoder_input_ids (B, T) and return their logits (B, T, V) and exit layers.

        ``key_valid`` (B, P + T) marks readable positions, the P cached ones
        first. With ``cache`` the new keys and values are appended to it.
        """
        past_length = cache.get_seq_length() if cache is not None else 0
        new_valid = key_valid[:, past_length:]  # (B, T)
        if exit_layers is None:
            exit_layers = self.assign_decoder_exit_layers(decoder_input_ids, new_valid, past_length)
        states = self.architecture.embed_target(self.model, decoder_input_ids, past_length)  # (B, T, D)
        inputs = DecoderInputs(encoder_output.states, encoder_output.attention_mask, key_valid.bool(), cache)
        states = run_decoder(self.decoder_layers, states, exit_layers, inputs, self.resolve_form(form), self.target_bias)
        return self.architecture.logits(self.model, states), exit_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        form: str = "auto",
    ) -> Seq2SeqOutput:
        """Teacher-forced pass: logits for every target position and, with ``labels`` (B, T), the mean cross-entropy."""
        encoder_output = self.encode(input_ids, attention_mask, form=form)
        logits, decoder_exit_layers = self.decode(decoder_input_ids, encoder_output, decoder_attention_mask, form=form)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return Seq2SeqOutput(logits, encoder_output.exit_layers, decoder_exit_layers, loss)
