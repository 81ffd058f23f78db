"""Fine-tune a seq2seq backbone for summarisation, with or without a hash table, and write a checkpoint directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from hashee_cli.backbones import load_tokenizer
from hashee_cli.checkpoint import build_assigner, save_checkpoint
from hashee_cli.devices import resolve_device, resolve_precision
from hashee_cli.errors import HasheeError
from hashee_cli.finetuning import FinetuneResult, FinetuneSettings
from hashee_cli.hashing.table import load_hash_table
from hashee_cli.provenance import library_versions
from hashee_cli.seq2seq.checkpoint import load_seq2seq_backbone
from hashee_cli.seq2seq.data import encode_summaries, load_summaries, subsample_summaries
from hashee_cli.seq2seq.generation import GenerationSettings
from hashee_cli.seq2seq.model import HashEESeq2SeqModel
from hashee_cli.seq2seq.training import train_summarizer
from hashee_cli.training import TrainingCallback, seed_everything

SUMMARIZATION_METHODS = ("hashee", "full")


def _check_single_process(settings: FinetuneSettings) -> None:
    # NOTE: summarisation trains in one process at full precision without resumable checkpoints.
    if settings.resume or settings.save_steps:
        raise HasheeError("summarisation fine-tuning keeps no resumable checkpoints; drop --resume and --save-steps")
    if settings.precision != "fp32":
        raise HasheeError(f"summarisation fine-tuning runs in fp32 only; drop --{settings.precision}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise HasheeError("summarisation fine-tuning runs in one process; start it without torchrun")


def finetune_summarizer(settings: FinetuneSettings, callback: TrainingCallback | None = None) -> FinetuneResult:
    """Load data and backbone, fine-tune with teacher forcing, and save the best epoch (dev ROUGE) as a checkpoint.

    Every input is checked (hash table against the tokenizer, data files)
    before training starts, and the checkpoint directory appears whole or
    not at all.
    """
    start_time = time.perf_counter()
    output_dir = Path(settings.output_dir)
    if output_dir.exists() and not settings.overwrite:
        raise HasheeError(f"output directory {output_dir} already exists; choose another path or pass --overwrite")
    if settings.method not in SUMMARIZATION_METHODS:
        raise HasheeError(f"--method {settings.method} is not available for summarisation; use hashee or full")
    if settings.method == "full" and settings.hash_table:
        raise HasheeError("--method full uses no hash table; drop --hash-table or use --method hashee")
    if settings.method == "hashee" and not settings.hash_table:
        raise HasheeError("--method hashee needs --hash-table (build one with `hashee build-hash`), or use --method full")
    _check_single_process(settings)
    table = load_hash_table(settings.hash_table) if settings.hash_table else None
    device = resolve_device(settings.device)

    data = settings.data
    task = data.task_spec()
    seed = settings.training.seed
    train_split = subsample_summaries(load_summaries(data, task, "train"), settings.train_limit, seed)
    dev_split = subsample_summaries(load_summaries(data, task, "dev"), settings.dev_limit, seed)

    tokenizer = load_tokenizer(settings.model)
    # Seed before the new weights (cross-attention, head) are initialised, or two runs start apart.
    seed_everything(seed)
    hf_model = load_seq2seq_backbone(settings.model, tokenizer, settings.num_layers)
    depth = HashEESeq2SeqModel(hf_model).num_layers  # also rejects unequal encoder and decoder depths
    assigner = None
    if table is not None:
        table.check_compatible(tokenizer, depth, settings.hash_table)
        assigner = build_assigner(table, tokenizer, len(tokenizer))
    model = HashEESeq2SeqModel(hf_model, assigner).to(device)
    model.check_lengths(data.max_seq_length, data.max_target_length)

    start_token = model.decoder_start_token_id
    train_encoded = encode_summaries(train_split, tokenizer, data.max_seq_length, data.max_target_length, start_token)
    dev_encoded = encode_summaries(dev_split, tokenizer, data.max_seq_length, data.max_target_length, start_token)
    generation = GenerationSettings(max_new_tokens=data.max_target_length)
    result = train_summarizer(model, train_encoded, dev_encoded, task, settings.training, generation, tokenizer, callback)

    saved = {
        "command": "finetune",
        "model": settings.model,
        "method": settings.method,
        "architecture": model.architecture.name,
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
        "dev_generation": generation.to_dict(),
        "best_epoch": result.best_epoch,
        "best_dev_score": result.best_score,
        "select_metric": result.select_metric,
        "num_train_examples": len(train_encoded),
        "num_dev_examples": len(dev_encoded),
        "num_truncated_documents": train_encoded.num_truncated_documents + dev_encoded.num_truncated_documents,
        "num_truncated_summaries": train_encoded.num_truncated_summaries + dev_encoded.num_truncated_summaries,
        "versions": library_versions(),
    }
    save_checkpoint(
        output_dir, model, tokenizer, saved, table, pd.DataFrame(result.history), overwrite=settings.overwrite
    )
    num_truncated = train_encoded.num_truncated_documents + dev_encoded.num_truncated_documents
    return FinetuneResult(
        output_dir,
        result,
        len(train_encoded),
        len(dev_encoded),
        num_truncated,
        time.perf_counter() - start_time,
        resolve_precision("fp32", device),
        processes=1,
        is_main=True,
    )
