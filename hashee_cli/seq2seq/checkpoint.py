"""Load seq2seq backbones (a pretrained encoder-decoder, or bert2bert warm-started from a BERT) and checkpoints.

A summarisation checkpoint has the layout of ``hashee_cli.checkpoint`` with
an encoder-decoder model in ``config.json`` and ``model.safetensors``; it
loads in plain transformers with ``AutoModelForSeq2SeqLM``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel, PreTrainedModel, PreTrainedTokenizerBase

from hashee_cli.backbones import load_config, resolve_model_source
from hashee_cli.checkpoint import (
    check_checkpoint_files,
    checkpoint_task,
    load_checkpoint_hash_table,
    load_model_and_tokenizer,
)
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError, ModelNotFoundError
from hashee_cli.hashing.table import HashTable
from hashee_cli.seq2seq.architectures import seq2seq_architecture_for
from hashee_cli.seq2seq.model import HashEESeq2SeqModel

# Encoder-only model types that bert2bert can be warm-started from.
WARM_START_TYPES = ("bert",)


def warm_start_bert2bert(source: str, tokenizer: PreTrainedTokenizerBase) -> EncoderDecoderModel:
    """Build a bert2bert model whose encoder and decoder both start from the BERT at ``source``.

    The decoder gets causal self-attention and new, randomly initialised
    cross-attention; its language-model head shares the decoder's word
    embeddings. [CLS] starts decoding and [SEP] ends it.
    """
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(source, source)
    special = {
        "decoder_start_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for name, value in special.items():
        if value is None:
            raise HasheeError(f"the tokenizer of {source} has no {name.removesuffix('_id')}; bert2bert needs [CLS], [SEP] and [PAD]")
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)
    model.config.vocab_size = model.config.decoder.vocab_size
    return model


def load_seq2seq_backbone(model_name: str, tokenizer: PreTrainedTokenizerBase, num_layers: int | None = None) -> PreTrainedModel:
    """Load a pretrained encoder-decoder, or warm-start bert2bert from a BERT encoder.

    ``num_layers`` keeps the first k layers of both the encoder and the decoder.
    """
    config = load_config(model_name)
    source = resolve_model_source(model_name)
    try:
        if config.is_encoder_decoder:
            model = AutoModelForSeq2SeqLM.from_pretrained(source)
        elif config.model_type in WARM_START_TYPES:
            model = warm_start_bert2bert(source, tokenizer)
        else:
            raise HasheeError(
                f"model {model_name} ({config.model_type}) is neither an encoder-decoder (BART, T5, bert2bert) "
                f"nor a BERT encoder to warm-start bert2bert from"
            )
    except OSError as error:
        raise ModelNotFoundError(f"cannot load weights of model {model_name!r}: {error}") from error

    architecture = seq2seq_architecture_for(model.config)
    depths = architecture.depths(model.config)
    if num_layers is not None:
        if not 1 <= num_layers <= min(depths):
            raise HasheeError(f"--num-layers must be between 1 and {min(depths)} for {model_name} (got {num_layers})")
        architecture.truncate(model, num_layers)
    return model


def seq2seq_depth(model_name: str) -> int:
    """Return the number of layers per stack of a seq2seq backbone (a BERT to warm-start counts its own)."""
    config = load_config(model_name)
    if not config.is_encoder_decoder:
        if config.model_type not in WARM_START_TYPES:
            raise HasheeError(
                f"model {model_name} ({config.model_type}) is neither an encoder-decoder (BART, T5, bert2bert) "
                "nor a BERT encoder to warm-start bert2bert from"
            )
        return config.num_hidden_layers
    encoder, decoder = seq2seq_architecture_for(config).depths(config)
    return min(encoder, decoder)


@dataclass
class Seq2SeqCheckpoint:
    """A loaded summarisation checkpoint: the model, its tokenizer, task and saved settings."""

    path: Path
    model: HashEESeq2SeqModel
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    settings: dict
    hash_table: HashTable | None

    @property
    def method(self) -> str:
        return self.settings.get("method", "hashee" if self.hash_table else "full")


def is_summarization_checkpoint(path: str | Path) -> bool:
    """Whether the checkpoint directory at ``path`` contains a summarisation model (it must be complete)."""
    settings = check_checkpoint_files(Path(path))
    return settings.get("task", {}).get("problem_type") == "summarization"


def load_seq2seq_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Seq2SeqCheckpoint:
    """Load a summarisation checkpoint written by ``hashee finetune`` and move it to ``device`` in eval mode."""
    path = Path(path)
    settings = check_checkpoint_files(path)
    task = checkpoint_task(path, settings)
    hf_model, tokenizer = load_model_and_tokenizer(path, AutoModelForSeq2SeqLM)
    # One table serves both stacks, so it is checked against the shallower one.
    depth = min(seq2seq_architecture_for(hf_model.config).depths(hf_model.config))
    vocab_size = hf_model.config.get_text_config(decoder=True).vocab_size
    table, assigner = load_checkpoint_hash_table(path, settings, tokenizer, depth, vocab_size)
    model = HashEESeq2SeqModel(hf_model, assigner).to(device).eval()
    return Seq2SeqCheckpoint(path, model, tokenizer, task, settings, table)
