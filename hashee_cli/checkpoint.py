"""Checkpoint directories: Hugging Face weights and tokenizer plus hashee's own files.

A checkpoint directory contains:
  config.json, model.safetensors  the fine-tuned ``*ForSequenceClassification`` model
  tokenizer files                 from ``tokenizer.save_pretrained``
  hashee_config.json              the resolved command arguments, task, method and versions
  hash_table.json                 the hash table (HashEE runs only)
  exit_heads.safetensors          internal classifiers of layers 1..L-1 (multi-exit runs only)
  epoch_metrics.csv               training loss and dev metrics per epoch

The directory loads in plain transformers as an ordinary classifier; hashee
adds the hash table on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from hashee_cli import atomic
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import CheckpointError, HasheeError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.hashing.table import HashTable, load_hash_table
from hashee_cli.modeling.model import HashEEModel
from hashee_cli.modeling.multi_exit import EXIT_HEADS_FILE, MultiExitModel

CONFIG_FILE = "hashee_config.json"
HASH_TABLE_FILE = "hash_table.json"
EPOCH_METRICS_FILE = "epoch_metrics.csv"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")
# Methods whose checkpoints carry internal classifiers in EXIT_HEADS_FILE.
MULTI_EXIT_METHODS = ("multi-exit", "deebert", "pabee")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its tokenizer, task and saved settings."""

    path: Path
    model: HashEEModel | MultiExitModel
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    settings: dict
    hash_table: HashTable | None

    @property
    def method(self) -> str:
        return self.settings.get("method", "hashee" if self.hash_table else "full")


def build_assigner(table: HashTable, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> ExitAssigner:
    """Return an ExitAssigner for ``table`` that sends the tokenizer's special tokens to the last layer."""
    return ExitAssigner(table, tokenizer.all_special_ids, max(vocab_size, len(tokenizer)))


def save_checkpoint(
    path: Path,
    model: HashEEModel | MultiExitModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: dict,
    hash_table: HashTable | None,
    epoch_metrics: pd.DataFrame,
    overwrite: bool = False,
) -> None:
    """Write a complete checkpoint directory atomically: it appears whole under ``path`` or not at all."""
    with atomic.atomic_directory(path, overwrite=overwrite) as staging:
        model.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        atomic.write_text(staging / CONFIG_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        if hash_table is not None:
            hash_table.save(staging / HASH_TABLE_FILE)
        if isinstance(model, MultiExitModel):
            save_file(model.exit_heads.state_dict(), staging / EXIT_HEADS_FILE)
        atomic.write_csv(staging / EPOCH_METRICS_FILE, epoch_metrics)


def check_checkpoint_files(path: Path) -> dict:
    """Raise CheckpointError naming the first missing file; return the saved settings."""
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist; pass the --output-dir of `hashee finetune`")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; pass the directory that `hashee finetune` wrote")

    required = ["config.json", CONFIG_FILE]
    missing = [name for name in required if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or vocab.txt)")
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: {', '.join(missing)} missing; "
            "re-run `hashee finetune` to write it again"
        )

    try:
        settings = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({error}); re-run `hashee finetune`") from error
    if settings.get("hash_table") and not (path / HASH_TABLE_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {HASH_TABLE_FILE} missing for a HashEE model")
    if settings.get("method") in MULTI_EXIT_METHODS and not (path / EXIT_HEADS_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {EXIT_HEADS_FILE} missing for a multi-exit model")
    return settings


def checkpoint_task(path: Path, settings: dict) -> TaskSpec:
    """Read the task entry of a checkpoint's settings."""
    try:
        return TaskSpec.from_dict(settings["task"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path / CONFIG_FILE} has no valid task entry ({error}); re-run `hashee finetune`") from error


def load_model_and_tokenizer(path: Path, auto_class) -> tuple:
    """Load the Hugging Face model (with ``auto_class``) and the tokenizer saved in a checkpoint directory."""
    try:
        return auto_class.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the model in {path}: {error}") from error


def load_checkpoint_hash_table(path: Path, settings: dict, tokenizer, num_layers: int, vocab_size: int) -> tuple:
    """Return the checkpoint's hash table and its assigner, both None for a model without one.

    The table must match the saved tokenizer and ``num_layers``.
    """
    if not settings.get("hash_table"):
        return None, None
    table = load_hash_table(path / HASH_TABLE_FILE)
    try:
        table.check_compatible(tokenizer, num_layers, str(path / HASH_TABLE_FILE))
    except HasheeError as error:
        raise CheckpointError(str(error)) from error
    return table, build_assigner(table, tokenizer, vocab_size)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` and move it to ``device`` in eval mode."""
    path = Path(path)
    settings = check_checkpoint_files(path)
    task = checkpoint_task(path, settings)
    hf_model, tokenizer = load_model_and_tokenizer(path, AutoModelForSequenceClassification)
    table, assigner = load_checkpoint_hash_table(
        path, settings, tokenizer, hf_model.config.num_hidden_layers, hf_model.config.vocab_size
    )

    if settings.get("method") in MULTI_EXIT_METHODS:
        model = MultiExitModel(hf_model)
        try:
            model.exit_heads.load_state_dict(load_file(path / EXIT_HEADS_FILE))
        except (RuntimeError, OSError) as error:
            raise CheckpointError(f"cannot load {path / EXIT_HEADS_FILE}: {error}; re-run `hashee finetune`") from error
    else:
        model = HashEEModel(hf_model, assigner)
    model = model.to(device).eval()
    return Checkpoint(path, model, tokenizer, task, settings, table)
