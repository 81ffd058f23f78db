"""Fine-tune a backbone and write a checkpoint directory.

Methods:
  hashee      token exit by a hash table
  full        the ordinary model
  multi-exit  a classifier after every layer, trained jointly with layer l's loss weighted by l
  pabee       the same joint training, with the best epoch picked by the mean over all classifiers
  deebert     two stages: the ordinary model, then the internal classifiers with the rest frozen
  static      the first k layers plus a head, one model per k
"""

from __future__ import annotations

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
from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.table import HashTable, load_hash_table
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.provenance import library_versions
from hashee_cli.training import TrainingCallback, TrainingConfig, TrainingResult, seed_everything, train

METHODS = ("hashee", "full", "multi-exit", "static", "deebert", "pabee")
# A static curve is a directory with one checkpoint per depth and this manifest.
STATIC_CURVE_FILE = "static_curve.json"


def static_member_name(depth: int) -> str:
    return f"layers-{depth}"


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
    overwrite: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass
class FinetuneResult:
    """The outcome of a fine-tuning run; ``members`` lists the checkpoints of a static curve."""

    output_dir: Path
    result: TrainingResult
    num_train: int
    num_dev: int
    num_truncated: int
    seconds: float
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


def _saved_settings(
    settings: FinetuneSettings,
    prepared: _PreparedData,
    num_layers: int,
    table: HashTable | None,
    result: TrainingResult,
    device: torch.device,
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
        "device": str(device),
        "data": settings.data.to_dict(),
        "task": prepared.task.to_dict(),
        "training": settings.training.to_dict(),
        "best_epoch": result.best_epoch,
        "best_dev_score": result.best_score,
        "select_metric": result.select_metric,
        "num_train_examples": len(prepared.train),
        "num_dev_examples": len(prepared.dev),
        **extra,
        "versions": library_versions(),
    }


def _train(model, prepared: _PreparedData, settings: FinetuneSettings, callback, dev_evaluator=None) -> TrainingResult:
    return train(
        model, prepared.train, prepared.dev, prepared.task, settings.training, prepared.pad_token_id, callback, dev_evaluator
    )


def _announce(callback: TrainingCallback | None, stage: str) -> None:
    # Callbacks written before stages existed have no on_stage; they simply miss the label.
    on_stage = getattr(callback, "on_stage", None)
    if on_stage is not None:
        on_stage(stage)


def finetune(settings: FinetuneSettings, callback: TrainingCallback | None = None) -> FinetuneResult:
    """Load data and backbone, fine-tune, and save the best epoch as a checkpoint directory.

    ``--method static`` writes a directory with one checkpoint per depth;
    ``deebert`` runs its two stages; every other method trains one model.
    """
    start = time.perf_counter()
    output_dir = Path(settings.output_dir)
    if output_dir.exists() and not settings.overwrite:
        raise HasheeError(f"output directory {output_dir} already exists; choose another path or pass --overwrite")
    table = _check_method_options(settings)
    device = resolve_device(settings.device)
    depths = _static_depths(settings) if settings.method == "static" else None
    init_from = _load_first_stage(settings, device) if settings.init_from else None

    prepared = _prepare_data(settings)
    if settings.method == "static":
        result, members = _finetune_static(settings, prepared, depths, device, callback)
        return FinetuneResult(
            output_dir, result, len(prepared.train), len(prepared.dev), prepared.num_truncated,
            time.perf_counter() - start, members,
        )
    if settings.method == "deebert":
        model, result, extra = _finetune_deebert(settings, prepared, init_from, device, callback)
    else:
        model, result, extra = _finetune_single(settings, prepared, table, device, callback)

    save_checkpoint(
        output_dir,
        model,
        prepared.tokenizer,
        _saved_settings(settings, prepared, model.num_layers, table, result, device, **extra),
        table,
        pd.DataFrame(result.history),
        overwrite=settings.overwrite,
    )
    return FinetuneResult(
        output_dir, result, len(prepared.train), len(prepared.dev), prepared.num_truncated, time.perf_counter() - start
    )


def _finetune_single(
    settings: FinetuneSettings, prepared: _PreparedData, table: HashTable | None, device: torch.device, callback
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
        model = MultiExitModel(hf_model).to(device)
    else:
        model = HashEEModel(hf_model, assigner).to(device)

    dev_evaluator = None
    if settings.method == "pabee":
        # Every classifier is trained, so the best epoch is the one with the best mean over all of them.
        dev_evaluator = exit_dev_evaluator(
            model, prepared.dev, prepared.task, settings.training.eval_batch_size, prepared.pad_token_id,
            range(1, model.num_layers + 1),
        )
    result = _train(model, prepared, settings, callback, dev_evaluator)
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
    settings: FinetuneSettings, prepared: _PreparedData, depths: list[int], device: torch.device, callback
) -> tuple[TrainingResult, list[dict]]:
    """Train the first k layers plus a head for every depth k; write them into one directory at once."""
    members = []
    history = []
    result = None
    with atomic.atomic_directory(settings.output_dir, overwrite=settings.overwrite) as staging:
        for depth in depths:
            _announce(callback, f"static, {depth} of {max(depths)} layers")
            seed_everything(settings.training.seed)
            model = HashEEModel(load_backbone_for_task(settings.model, prepared.task, depth)).to(device)
            result = _train(model, prepared, settings, callback)
            name = static_member_name(depth)
            saved = _saved_settings(settings, prepared, depth, None, result, device, static_curve=str(settings.output_dir))
            member_history = pd.DataFrame(result.history)
            save_checkpoint(staging / name, model, prepared.tokenizer, saved, None, member_history)
            members.append({"depth": depth, "checkpoint": name, "best_epoch": result.best_epoch, "best_dev_score": result.best_score})
            history.extend({"depth": depth, **record} for record in result.history)
            del model

        manifest = {"method": "static", "model": settings.model, "task": prepared.task.name, "members": members}
        atomic.write_text(staging / STATIC_CURVE_FILE, json.dumps(manifest, indent=2) + "\n")
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
    settings: FinetuneSettings, prepared: _PreparedData, first_stage: Checkpoint | None, device: torch.device, callback
) -> tuple[MultiExitModel, TrainingResult, dict]:
    """Run DeeBERT's two stages, or only the second one on top of ``first_stage``."""
    history: list[dict] = []
    if first_stage is None:
        _announce(callback, "deebert stage 1: backbone and final classifier")
        seed_everything(settings.training.seed)
        stage_one = HashEEModel(load_backbone_for_task(settings.model, prepared.task, settings.num_layers)).to(device)
        first = _train(stage_one, prepared, settings, callback)
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
    model = MultiExitModel(hf_model).to(device)
    trainer = FrozenBackboneExits(model)
    # Only the internal classifiers change, so they alone pick the best epoch.
    dev_evaluator = exit_dev_evaluator(
        model, prepared.dev, prepared.task, settings.training.eval_batch_size, prepared.pad_token_id,
        range(1, model.num_layers),
    )
    second = _train(trainer, prepared, settings, callback, dev_evaluator)
    history.extend({"stage": 2, **record} for record in second.history)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    result = TrainingResult(second.best_epoch, second.best_score, second.select_metric, history)
    return model, result, {"init_from": init_from, "stages": "1: backbone and final classifier; 2: internal classifiers"}
