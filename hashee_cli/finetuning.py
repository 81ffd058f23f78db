"""Fine-tune a backbone, with or without a hash table, and write a checkpoint directory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hashee_cli.backbones import load_tokenizer
from hashee_cli.checkpoint import build_assigner, save_checkpoint
from hashee_cli.data.encoding import EncodedSplit, encode_split
from hashee_cli.data.reading import DataConfig, load_split, resolve_task, subsample
from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.table import HashTable, load_hash_table
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.provenance import library_versions
from hashee_cli.training import TrainingCallback, TrainingConfig, TrainingResult, seed_everything, train

METHODS = ("hashee", "full", "multi-exit")


@dataclass
class FinetuneSettings:
    """Everything ``hashee finetune`` needs; saved in the checkpoint as ``hashee_config.json``."""

    output_dir: str
    model: str = "minilm-l6"
    method: str = "hashee"
    hash_table: str | None = None
    num_layers: int | None = None
    train_limit: int | None = None
    dev_limit: int | None = None
    device: str = "auto"
    overwrite: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass
class FinetuneResult:
    output_dir: Path
    result: TrainingResult
    num_train: int
    num_dev: int
    num_truncated: int
    seconds: float


def _hash_table_for(settings: FinetuneSettings) -> HashTable | None:
    if settings.method not in METHODS:
        raise HasheeError(f"unknown --method {settings.method!r}; use one of {', '.join(METHODS)}")
    if settings.method != "hashee":
        if settings.hash_table:
            raise HasheeError(f"--method {settings.method} uses no hash table; drop --hash-table or use --method hashee")
        return None
    if not settings.hash_table:
        raise HasheeError("--method hashee needs --hash-table (build one with `hashee build-hash`), or use --method full")
    return load_hash_table(settings.hash_table)


def finetune(settings: FinetuneSettings, callback: TrainingCallback | None = None) -> FinetuneResult:
    """Load data and backbone, fine-tune, and save the best epoch as a checkpoint directory."""
    start = time.perf_counter()
    output_dir = Path(settings.output_dir)
    if output_dir.exists() and not settings.overwrite:
        raise HasheeError(f"output directory {output_dir} already exists; choose another path or pass --overwrite")
    table = _hash_table_for(settings)
    device = resolve_device(settings.device)

    data = settings.data
    task_spec = data.task_spec()
    train_split = load_split(data, task_spec, "train")
    task = resolve_task(data, train_split)
    dev_split = load_split(data, task, "dev")
    train_split = subsample(train_split, settings.train_limit, settings.training.seed)
    dev_split = subsample(dev_split, settings.dev_limit, settings.training.seed)

    tokenizer = load_tokenizer(settings.model)
    # Seed before the new head is initialised, or two runs start from different weights.
    seed_everything(settings.training.seed)
    hf_model = load_backbone_for_task(settings.model, task, settings.num_layers)
    assigner = None
    if table is not None:
        table.check_compatible(tokenizer, hf_model.config.num_hidden_layers, settings.hash_table)
        assigner = build_assigner(table, tokenizer, hf_model.config.vocab_size)
    if settings.method == "multi-exit":
        model = MultiExitModel(hf_model).to(device)
    else:
        model = HashEEModel(hf_model, assigner).to(device)

    train_encoded: EncodedSplit = encode_split(train_split, task, tokenizer, data.max_seq_length)
    dev_encoded: EncodedSplit = encode_split(dev_split, task, tokenizer, data.max_seq_length)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    result = train(model, train_encoded, dev_encoded, task, settings.training, pad_token_id, callback)

    saved = {
        "command": "finetune",
        "model": settings.model,
        "method": settings.method,
        "hash_table": settings.hash_table,
        "hash_method": table.method if table else None,
        "num_layers": model.num_layers,
        "exit_layers": table.exit_layers if table else None,
        "train_limit": settings.train_limit,
        "dev_limit": settings.dev_limit,
        "device": str(device),
        "data": data.to_dict(),
        "task": task.to_dict(),
        "training": settings.training.to_dict(),
        "best_epoch": result.best_epoch,
        "best_dev_score": result.best_score,
        "select_metric": result.select_metric,
        "num_train_examples": len(train_encoded),
        "num_dev_examples": len(dev_encoded),
        "versions": library_versions(),
    }
    save_checkpoint(
        output_dir,
        model,
        tokenizer,
        saved,
        table,
        pd.DataFrame(result.history),
        overwrite=settings.overwrite,
    )
    num_truncated = train_encoded.num_truncated + dev_encoded.num_truncated
    return FinetuneResult(output_dir, result, len(train_encoded), len(dev_encoded), num_truncated, time.perf_counter() - start)
