"""Fine-tune a backbone and write a checkpoint directory.

Methods:
  hashee      token exit by a hash table
  full        the ordinary model
  multi-exit  a classifier after every layer, trained jointly with layer l's loss weighted by l
  pabee       the same joint training, with the best epoch picked by the mean over all classifiers
  deebert     two stages: the ordinary model, then the internal classifiers with the rest frozen
  static      the first k layers plus a head, one model per k

A run may span several processes (torchrun). Methods that train one model
keep resumable checkpoints beside the output directory and can continue
from the latest of them.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from hashee_cli import atomic
from hashee_cli.backbones import load_config, load_tokenizer
from hashee_cli.baselines import FrozenBackboneExits, exit_dev_evaluator
from hashee_cli.checkpoint import EPOCH_METRICS_FILE, Checkpoint, build_assigner, load_checkpoint, save_checkpoint
from hashee_cli.data.encoding import EncodedSplit, encode_split
from hashee_cli.data.reading import DataConfig, load_split, resolve_task, subsample
from hashee_cli.data.tasks import TaskSpec
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

METHODS = ("hashee", "full", "multi-exit", "static", "deebert", "pabee")
# Methods that train several models in turn; they keep no resumable checkpoints.
SEVERAL_MODEL_METHODS = ("static", "deebert")
# A static curve is a directory with one checkpoint per depth and this manifest.
STATIC_CURVE_FILE = "static_curve.json"


def static_member_name(depth: int) -> str:
    return f"layers-{depth}"


def curve_member_run(curve: Path, run: str) -> str:
    """Return the run name of one depth of a static curve, prefixed with the curve's name.

    Depth directories (layers-1, layers-2, ...) have the same names in every curve, so the prefix distinguishes them.
    """
    return f"{Path(curve).name}/{run}"


def static_curve_members(path: Path) -> list[Path] | None:
    """Return the checkpoints of a static curve directory, shallowest first, or None for any other path."""
    manifest = Path(path) / STATIC_CURVE_FILE
    if not manifest.is_file():
        return None
    try:
        members = json.loads(manifest.read_text(encoding="utf-8"))["members"]
        checkpoints = [Path(path) / member["checkpoint"] for member in members]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise HasheeError(f"{manifest} is not a valid static curve manifest ({error}); re-run `hashee finetune --method static`") from error
    missing = [str(checkpoint) for checkpoint in checkpoints if not checkpoint.is_dir()]
    if missing:
        raise HasheeError(f"static curve {path} is incomplete: {', '.join(missing)} missing; re-run `hashee finetune --method static`")
    return checkpoints


@dataclass
class FinetuneSettings:
    """Everything ``hashee finetune`` needs; saved in the checkpoint as ``hashee_config.json``.

    ``depths`` lists the layer counts of a static curve (default 1..L).
    ``init_from`` is a full-model checkpoint that serves as DeeBERT's first
    stage, so that only the internal classifiers are trained.
    """

    output_dir: str
    model: str = "minilm-l6"
    method: str = "hashee"
    hash_table: str | None = None
    num_layers: int | None = None
    depths: list[int] | None = None
    init_from: str | None = None
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
    """The outcome of a fine-tuning run; ``members`` lists the checkpoints of a static curve."""

    output_dir: Path
    result: TrainingResult
    num_train: int
    num_dev: int
    num_truncated: int
    seconds: float
    precision: Precision
    processes: int
    is_main: bool
    members: list[dict] = field(default_factory=list)


def _check_method_options(settings: FinetuneSettings) -> HashTable | None:
    """Check the options that depend on the method; return the hash table of a HashEE run."""
    method = settings.method
    if method not in METHODS:
        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise HasheeError(f"unknown --method {method!r}; {hint}use one of {', '.join(METHODS)}")
    if settings.depths is not None and method != "static":
        raise HasheeError("--depths applies to --method static only")
    if settings.init_from is not None and method != "deebert":
        raise HasheeError("--init-from applies to --method deebert only (it supplies the first training stage)")
    if method == "static" and settings.num_layers is not None:
        raise HasheeError("--method static trains one model per depth; give the depths with --depths, not --num-layers")
    if method != "hashee":
        if settings.hash_table:
            raise HasheeError(f"--method {method} uses no hash table; drop --hash-table or use --method hashee")
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


@dataclass
class _PreparedData:
    task: TaskSpec
    tokenizer: PreTrainedTokenizerBase
    train: EncodedSplit
    dev: EncodedSplit
    pad_token_id: int

    @property
    def num_truncated(self) -> int:
        return self.train.num_truncated + self.dev.num_truncated


def _prepare_data(settings: FinetuneSettings) -> _PreparedData:
    data = settings.data
    train_split = load_split(data, data.task_spec(), "train")
    task = resolve_task(data, train_split)
    dev_split = load_split(data, task, "dev")
    train_split = subsample(train_split, settings.train_limit, settings.training.seed)
    dev_split = subsample(dev_split, settings.dev_limit, settings.training.seed)

    tokenizer = load_tokenizer(settings.model)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _PreparedData(
        task=task,
        tokenizer=tokenizer,
        train=encode_split(train_split, task, tokenizer, data.max_seq_length),
        dev=encode_split(dev_split, task, tokenizer, data.max_seq_length),
        pad_token_id=pad_token_id,
    )


@dataclass
class _Run:
    """The setting of one training run: its processes and precision, and the resumable state of a one-model method."""

    context: DistributedContext
    precision: Precision
    stop: StopRequest | None = None
    manager: CheckpointManager | None = None
    run_settings: dict = field(default_factory=dict)
    resume_from: TrainingCheckpoint | None = None

    @property
    def device(self) -> torch.device:
        return self.context.device

    def runtime(self, resumable: bool = True) -> TrainingRuntime:
        """Build the training runtime. A model trained among several gets no checkpoints of its own."""
        if not resumable:
            return TrainingRuntime(self.context, self.precision, stop=self.stop)
        return TrainingRuntime(self.context, self.precision, self.manager, self.run_settings, self.resume_from, self.stop)


def _saved_settings(
    settings: FinetuneSettings,
    prepared: _PreparedData,
    num_layers: int,
    table: HashTable | None,
    result: TrainingResult,
    run: _Run,
    **extra,
) -> dict:
    """Return the settings written to ``hashee_config.json``."""
    return {
        "command": "finetune",
        "model": settings.model,
        "method": settings.method,
        "hash_table": settings.hash_table,
        "hash_method": table.method if table else None,
        "num_layers": num_layers,
        "exit_layers": table.exit_layers if table else None,
        "train_limit": settings.train_limit,
        "dev_limit": settings.dev_limit,
        "device": str(run.device),
        "precision": run.precision.name,
        "processes": run.context.world_size,
        "resumed_from_step": result.resumed_from_step,
        "data": settings.data.to_dict(),
        "task": prepared.task.to_dict(),
        "training": settings.training.to_dict(),
        "seed": settings.training.seed,
        "best_epoch": result.best_epoch,
        "best_dev_score": result.best_score,
        "select_metric": result.select_metric,
        "num_train_examples": len(prepared.train),
        "num_dev_examples": len(prepared.dev),
        **extra,
        "versions": library_versions(),
    }


def _train(
    model, prepared: _PreparedData, settings: FinetuneSettings, callback, run: _Run, dev_evaluator=None, resumable=True
) -> TrainingResult:
    return train(
        model, prepared.train, prepared.dev, prepared.task, settings.training, prepared.pad_token_id, callback,
        dev_evaluator, run.runtime(resumable),
    )


def _announce(callback: TrainingCallback | None, stage: str) -> None:
    # Callbacks written before stages existed have no on_stage; they simply miss the label.
    on_stage = getattr(callback, "on_stage", None)
    if on_stage is not None:
        on_stage(stage)


def _check_resumable(settings: FinetuneSettings) -> None:
    if settings.method in SEVERAL_MODEL_METHODS and (settings.resume or settings.save_steps):
        option = "--resume" if settings.resume else "--save-steps"
        raise HasheeError(
            f"{option} applies to methods that train one model; --method {settings.method} trains several in turn "
            "and keeps no resumable checkpoints, so run it again from the start (with --overwrite)"
        )


def finetune(
    settings: FinetuneSettings, callback: TrainingCallback | None = None, stop: StopRequest | None = None
) -> FinetuneResult:
    """Load data and backbone, fine-tune, and save the best epoch as a checkpoint directory.

    ``--method static`` writes a directory with one checkpoint per depth;
    ``deebert`` runs its two stages; every other method trains one model.
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
    table = _check_method_options(settings)
    _check_resumable(settings)
    depths = _static_depths(settings) if settings.method == "static" else None
    with distributed_session(settings.device) as context:
        return _finetune(settings, table, depths, context, callback, stop, start)


def _finetune(
    settings: FinetuneSettings,
    table: HashTable | None,
    depths: list[int] | None,
    context: DistributedContext,
    callback: TrainingCallback | None,
    stop: StopRequest | None,
    start: float,
) -> FinetuneResult:
    output_dir = Path(settings.output_dir)
    run = _Run(context, resolve_precision(settings.precision, context.device), stop)
    manager = None
    if settings.method not in SEVERAL_MODEL_METHODS:
        manager = CheckpointManager(settings.checkpoint_path, settings.save_steps, settings.save_total_limit, context.is_main)
        run.manager = manager
        run.run_settings = _run_settings(settings, run.precision, context.world_size)
        run.resume_from = _prepare_checkpoints(settings, manager, run.run_settings, context)
    init_from = _load_first_stage(settings, run.device) if settings.init_from else None

    prepared = _prepare_data(settings)

    def outcome(result: TrainingResult, members: list[dict] | None = None) -> FinetuneResult:
        return FinetuneResult(
            output_dir, result, len(prepared.train), len(prepared.dev), prepared.num_truncated,
            time.perf_counter() - start, run.precision, context.world_size, context.is_main, members or [],
        )

    if settings.method == "static":
        result, members = _finetune_static(settings, prepared, depths, run, callback)
        return outcome(result, members)
    if settings.method == "deebert":
        model, result, extra = _finetune_deebert(settings, prepared, init_from, run, callback)
    else:
        model, result, extra = _finetune_single(settings, prepared, table, run, callback)

    saved = _saved_settings(settings, prepared, model.num_layers, table, result, run, **extra)
    failure: HasheeError | None = None
    if context.is_main:
        try:
            save_checkpoint(
                output_dir, model, prepared.tokenizer, saved, table, pd.DataFrame(result.history),
                overwrite=settings.overwrite,
            )
        except OSError as error:
            advice = (
                f"Training finished and its state is kept in {result.last_checkpoint}: free space or fix the folder, "
                "then run the same command with --resume to write the output without training again"
                if result.last_checkpoint else "Free space or fix the folder and run the command again"
            )
            failure = CheckpointError(f"cannot write {output_dir}: {error.strerror or error}. {advice}")
        except HasheeError as error:
            failure = error
    if not context.all_agree(failure is None):
        raise failure or HasheeError(f"process 0 failed to write {output_dir}; see its error message")
    if manager is not None:
        # The output now contains everything the checkpoints were kept for.
        manager.clear()
    context.barrier()
    return outcome(result)


def _finetune_single(
    settings: FinetuneSettings, prepared: _PreparedData, table: HashTable | None, run: _Run, callback
) -> tuple[HashEEModel | MultiExitModel, TrainingResult, dict]:
    """Train one model: HashEE, full, multi-exit, or PABEE's jointly trained classifiers."""
    # Seed before the new head is initialised, or two runs start from different weights.
    seed_everything(settings.training.seed)
    hf_model = load_backbone_for_task(settings.model, prepared.task, settings.num_layers)
    assigner = None
    if table is not None:
        table.check_compatible(prepared.tokenizer, hf_model.config.num_hidden_layers, settings.hash_table)
        assigner = build_assigner(table, prepared.tokenizer, hf_model.config.vocab_size)
    if settings.method in ("multi-exit", "pabee"):
        model = MultiExitModel(hf_model).to(run.device)
    else:
        model = HashEEModel(hf_model, assigner).to(run.device)

    dev_evaluator = None
    if settings.method == "pabee":
        # Every classifier is trained, so the best epoch is the one with the best mean over all of them.
        dev_evaluator = exit_dev_evaluator(
            model, prepared.dev, prepared.task, settings.training.eval_batch_size, prepared.pad_token_id,
            range(1, model.num_layers + 1),
        )
    result = _train(model, prepared, settings, callback, run, dev_evaluator)
    extra = {"loss_weights": "layer l weighted by l"} if settings.method == "pabee" else {}
    return model, result, extra


def _static_depths(settings: FinetuneSettings) -> list[int]:
    total = load_config(settings.model).num_hidden_layers
    depths = settings.depths if settings.depths else list(range(1, total + 1))
    for depth in depths:
        if not 1 <= depth <= total:
            raise HasheeError(f"--depths {depth} is outside 1..{total} for {settings.model}")
    if len(set(depths)) != len(depths):
        raise HasheeError(f"--depths lists a depth twice ({', '.join(map(str, depths))}); give each once")
    return sorted(depths)


def _finetune_static(
    settings: FinetuneSettings, prepared: _PreparedData, depths: list[int], run: _Run, callback
) -> tuple[TrainingResult, list[dict]]:
    """Train the first k layers plus a head for every depth k; write them into one directory at once."""
    members = []
    history = []
    result = None
    is_main = run.context.is_main
    staging_directory = (
        atomic.atomic_directory(settings.output_dir, overwrite=settings.overwrite) if is_main else contextlib.nullcontext()
    )
    with staging_directory as staging:
        for depth in depths:
            _announce(callback, f"static, {depth} of {max(depths)} layers")
            seed_everything(settings.training.seed)
            model = HashEEModel(load_backbone_for_task(settings.model, prepared.task, depth)).to(run.device)
            result = _train(model, prepared, settings, callback, run, resumable=False)
            name = static_member_name(depth)
            if is_main:
                saved = _saved_settings(settings, prepared, depth, None, result, run, static_curve=str(settings.output_dir))
                save_checkpoint(staging / name, model, prepared.tokenizer, saved, None, pd.DataFrame(result.history))
            members.append({"depth": depth, "checkpoint": name, "best_epoch": result.best_epoch, "best_dev_score": result.best_score})
            history.extend({"depth": depth, **record} for record in result.history)
            del model

        if is_main:
            manifest = {"method": "static", "model": settings.model, "task": prepared.task.name, "members": members}
            atomic.write_text(staging / STATIC_CURVE_FILE, json.dumps(manifest, indent=2) + "\n")
    run.context.barrier()
    combined = TrainingResult(result.best_epoch, result.best_score, result.select_metric, history)
    return combined, members


def _load_first_stage(settings: FinetuneSettings, device: torch.device) -> Checkpoint:
    """Load the checkpoint given by --init-from and check that it can be DeeBERT's first stage."""
    checkpoint = load_checkpoint(settings.init_from, device)
    saved = checkpoint.settings
    if checkpoint.method not in ("full", "static") or checkpoint.hash_table is not None:
        raise HasheeError(
            f"--init-from {settings.init_from} was trained with --method {checkpoint.method}; "
            "DeeBERT's first stage is an ordinary fine-tuning, so pass a --method full checkpoint"
        )
    if saved.get("model") != settings.model:
        raise HasheeError(
            f"--init-from {settings.init_from} was fine-tuned from {saved.get('model')!r} but --model is "
            f"{settings.model!r}; pass --model {saved.get('model')}"
        )
    if settings.num_layers is not None and checkpoint.model.num_layers != settings.num_layers:
        raise HasheeError(
            f"--init-from {settings.init_from} has {checkpoint.model.num_layers} layers but --num-layers is {settings.num_layers}"
        )
    task = settings.data.task_spec().name
    if checkpoint.task.name != task:
        raise HasheeError(f"--init-from {settings.init_from} was trained on {checkpoint.task.name}, not {task}")
    return checkpoint


def _finetune_deebert(
    settings: FinetuneSettings, prepared: _PreparedData, first_stage: Checkpoint | None, run: _Run, callback
) -> tuple[MultiExitModel, TrainingResult, dict]:
    """Run DeeBERT's two stages, or only the second one on top of ``first_stage``."""
    history: list[dict] = []
    if first_stage is None:
        _announce(callback, "deebert stage 1: backbone and final classifier")
        seed_everything(settings.training.seed)
        stage_one = HashEEModel(load_backbone_for_task(settings.model, prepared.task, settings.num_layers)).to(run.device)
        first = _train(stage_one, prepared, settings, callback, run, resumable=False)
        history.extend({"stage": 1, **record} for record in first.history)
        hf_model = stage_one.model
        init_from = None
    else:
        if first_stage.task.labels != prepared.task.labels:
            raise HasheeError(
                f"--init-from {settings.init_from} predicts the labels {first_stage.task.labels} "
                f"but the training data has {prepared.task.labels}"
            )
        stage_file = first_stage.path / EPOCH_METRICS_FILE
        if stage_file.is_file():
            history.extend({"stage": 1, **record} for record in pd.read_csv(stage_file).to_dict(orient="records"))
        hf_model = first_stage.model.model
        init_from = str(first_stage.path)

    _announce(callback, "deebert stage 2: internal classifiers, backbone frozen")
    seed_everything(settings.training.seed)
    model = MultiExitModel(hf_model).to(run.device)
    trainer = FrozenBackboneExits(model)
    # Only the internal classifiers change, so they alone pick the best epoch.
    dev_evaluator = exit_dev_evaluator(
        model, prepared.dev, prepared.task, settings.training.eval_batch_size, prepared.pad_token_id,
        range(1, model.num_layers),
    )
    second = _train(trainer, prepared, settings, callback, run, dev_evaluator, resumable=False)
    history.extend({"stage": 2, **record} for record in second.history)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    result = TrainingResult(second.best_epoch, second.best_score, second.select_metric, history)
    return model, result, {"init_from": init_from, "stages": "1: backbone and final classifier; 2: internal classifiers"}
