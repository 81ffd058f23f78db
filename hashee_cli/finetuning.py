"""Fine-tune a backbone, with or without a hash table, and write a checkpoint directory.

The run may span several processes (torchrun), keeps resumable checkpoints
beside the output directory, and can continue from the latest of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hashee_cli.backbones import load_tokenizer
from hashee_cli.checkpoint import build_assigner, save_checkpoint
from hashee_cli.data.encoding import EncodedSplit, encode_split
from hashee_cli.data.reading import DataConfig, load_split, resolve_task, subsample
from hashee_cli.devices import Precision, resolve_precision
from hashee_cli.distributed import DistributedContext, distributed_session
from hashee_cli.errors import CheckpointError, HasheeError
from hashee_cli.hashing.table import HashTable, load_hash_table
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.provenance import library_versions
from hashee_cli.training import (
    StopRequest,
    TrainingCallback,
    TrainingConfig,
    TrainingResult,
    TrainingRuntime,
    seed_everything,
    train,
)
from hashee_cli.training_checkpoints import CheckpointManager, TrainingCheckpoint, differing_settings, file_sha256

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
    precision: str = "fp32"
    overwrite: bool = False
    checkpoint_dir: str | None = None
    save_steps: int = 0
    save_total_limit: int = 2
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @property
    def checkpoint_path(self) -> Path:
        """The folder of resumable checkpoints: --checkpoint-dir, or ``<output-dir>.checkpoints``."""
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir)
        output = Path(self.output_dir)
        if not output.name:
            # "." or "/" has no name to extend.
            output = output.resolve()
        return output.with_name(output.name + ".checkpoints")


@dataclass
class FinetuneResult:
    output_dir: Path
    result: TrainingResult
    num_train: int
    num_dev: int
    num_truncated: int
    seconds: float
    precision: Precision
    processes: int
    is_main: bool


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


# Settings that may change when a run resumes: where it runs and how often it checkpoints.
# Every other setting must match the original run's.
_RESUMABLE_CHANGES = ("device", "overwrite", "checkpoint_dir", "save_steps", "save_total_limit", "resume", "output_dir")

# Option names for run settings whose key does not spell the option.
_OPTION_NAMES = {
    "data.text_columns": "--text-column",
    "hash_table_sha256": "--hash-table (the file's contents)",
    "processes": "the number of processes (torchrun --nproc_per_node x nodes)",
    "precision": "--bf16/--fp16",
}


def _run_settings(settings: FinetuneSettings, precision: Precision, processes: int) -> dict:
    """Return the flat settings that fix a run's trajectory, as JSON would store them."""
    flat = {
        name: value
        for name, value in vars(settings).items()
        if name not in _RESUMABLE_CHANGES and name not in ("data", "training", "hash_table", "precision")
    }
    flat["hash_table_sha256"] = file_sha256(settings.hash_table) if settings.hash_table else None
    flat["precision"] = precision.name
    flat["processes"] = processes
    # The test split plays no part in training.
    flat.update({f"data.{name}": value for name, value in settings.data.to_dict().items() if name != "test_file"})
    flat.update({f"training.{name}": value for name, value in settings.training.to_dict().items()})
    return json.loads(json.dumps(flat))


def _option_name(key: str) -> str:
    return _OPTION_NAMES.get(key, "--" + key.split(".")[-1].replace("_", "-"))


def _prepare_checkpoints(
    settings: FinetuneSettings, manager: CheckpointManager, run_settings: dict, context: DistributedContext
) -> TrainingCheckpoint | None:
    """Load the checkpoint to resume from (--resume), or make sure no earlier run's checkpoints are in the way."""
    folder = manager.directory
    latest = manager.latest()
    if settings.resume:
        if latest is None:
            raise CheckpointError(f"--resume: no checkpoint in {folder}; run without --resume to start training")
        checkpoint = manager.load(latest)
        differences = differing_settings(checkpoint.run_settings, run_settings)
        if differences:
            listed = "; ".join(f"{_option_name(key)} was {old!r}, now {new!r}" for key, old, new in differences)
            raise HasheeError(
                f"cannot resume from {latest}: the arguments differ from the original run's ({listed}). "
                "Run with the original arguments, or pass --overwrite without --resume to start over"
            )
        manager.remove_temporaries()
        context.barrier()
        return checkpoint

    if latest is not None:
        if not settings.overwrite:
            raise HasheeError(
                f"{folder} contains checkpoints of an unfinished run (latest {latest.name}); continue it with "
                "--resume and the same arguments, or pass --overwrite to discard them and start over"
            )
        manager.clear()
    manager.remove_temporaries()
    context.barrier()
    return None


def finetune(
    settings: FinetuneSettings, callback: TrainingCallback | None = None, stop: StopRequest | None = None
) -> FinetuneResult:
    """Load data and backbone, fine-tune, and save the best epoch as a checkpoint directory.

    Under torchrun every process runs this; only process 0 writes files.
    ``stop`` lets a signal handler end training cleanly after the current step.
    """
    if settings.data.task_spec().problem_type == "summarization":
        from hashee_cli.seq2seq.finetuning import finetune_summarizer

        return finetune_summarizer(settings, callback)

    start = time.perf_counter()
    output_dir = Path(settings.output_dir)
    if output_dir.exists() and not settings.overwrite:
        raise HasheeError(f"output directory {output_dir} already exists; choose another path or pass --overwrite")
    table = _hash_table_for(settings)
    with distributed_session(settings.device) as context:
        return _finetune(settings, table, context, callback, stop, start)


def _finetune(
    settings: FinetuneSettings,
    table: HashTable | None,
    context: DistributedContext,
    callback: TrainingCallback | None,
    stop: StopRequest | None,
    start: float,
) -> FinetuneResult:
    output_dir = Path(settings.output_dir)
    device = context.device
    precision = resolve_precision(settings.precision, device)
    manager = CheckpointManager(settings.checkpoint_path, settings.save_steps, settings.save_total_limit, context.is_main)
    run_settings = _run_settings(settings, precision, context.world_size)
    resume_from = _prepare_checkpoints(settings, manager, run_settings, context)

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

    runtime = TrainingRuntime(context, precision, manager, run_settings, resume_from, stop)
    result = train(model, train_encoded, dev_encoded, task, settings.training, pad_token_id, callback, runtime)

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
        "precision": precision.name,
        "processes": context.world_size,
        "resumed_from_step": result.resumed_from_step,
        "data": data.to_dict(),
        "task": task.to_dict(),
        "training": settings.training.to_dict(),
        "seed": settings.training.seed,
        "best_epoch": result.best_epoch,
        "best_dev_score": result.best_score,
        "select_metric": result.select_metric,
        "num_train_examples": len(train_encoded),
        "num_dev_examples": len(dev_encoded),
        "versions": library_versions(),
    }
    failure: HasheeError | None = None
    if context.is_main:
        try:
            save_checkpoint(
                output_dir,
                model,
                tokenizer,
                saved,
                table,
                pd.DataFrame(result.history),
                overwrite=settings.overwrite,
            )
        except OSError as error:
            failure = CheckpointError(
                f"cannot write {output_dir}: {error.strerror or error}. Training finished and its state is kept in "
                f"{result.last_checkpoint}: free space or fix the folder, then run the same command with --resume "
                "to write the output without training again"
            )
        except HasheeError as error:
            failure = error
    if not context.all_agree(failure is None):
        raise failure or HasheeError(f"process 0 failed to write {output_dir}; see its error message")
    # The output now contains everything the checkpoints were kept for.
    manager.clear()
    context.barrier()

    num_truncated = train_encoded.num_truncated + dev_encoded.num_truncated
    return FinetuneResult(
        output_dir,
        result,
        len(train_encoded),
        len(dev_encoded),
        num_truncated,
        time.perf_counter() - start,
        precision,
        context.world_size,
        context.is_main,
    )
