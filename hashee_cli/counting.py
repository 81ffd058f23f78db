"""`count-flops` runs: load a model and a split, count every example, and build the CSV row.

The model is a checkpoint from ``hashee finetune`` (full, HashEE or
multi-exit), or a backbone with a new classification head, with a hash
table or without one (the full model). The head's weights do not change
the cost, so an untrained head counts the same as a trained one.

The row's key columns (run, checkpoint, task, split) are those of
``evaluate``'s metrics row, so the two CSVs join on them.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from hashee_cli.backbones import DEFAULT_MODEL, load_tokenizer
from hashee_cli.checkpoint import build_assigner, load_checkpoint
from hashee_cli.data.encoding import encode_split
from hashee_cli.data.reading import DataConfig, load_split, resolve_task, subsample
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError
from hashee_cli.flop_counting import FlopCounts, count_split, model_target
from hashee_cli.hashing.table import HashTable, load_hash_table
from hashee_cli.modeling.model import HashEEModel, load_backbone_for_task
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.seq2seq.checkpoint import is_summarization_checkpoint
from hashee_cli.seq2seq.counting import count_summarizer

METHODS = ("hashee", "full", "multi-exit")
FORMS = ("auto", "gathered", "masked", "dense")
# Unit name and factor from MACs: a FLOP count takes the multiply and the add apart.
UNITS = {"macs": ("MACs", 1), "flops": ("FLOPs", 2)}


@dataclass
class CountSettings:
    """The options of ``hashee count-flops``.

    With ``checkpoint`` the model, task and data settings come from the
    checkpoint, and ``data_options`` overrides the data settings it saved.
    Without one, ``model``, ``method`` and ``hash_table`` build the model and
    ``data_options`` are the data settings.
    """

    checkpoint: str | None = None
    model: str | None = None
    method: str | None = None
    hash_table: str | None = None
    num_layers: int | None = None
    run: str | None = None
    data_options: dict = field(default_factory=dict)
    split: str = "test"
    limit: int | None = None
    seed: int = 42
    batch_size: int = 64
    form: str = "auto"
    unit: str = "macs"
    device: str = "auto"


@dataclass
class LoadedModel:
    """A model to count, with its tokenizer, task, data settings and the columns that describe the run."""

    model: HashEEModel | MultiExitModel
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    data: DataConfig
    columns: dict


@dataclass
class CountResult:
    """The CSV row of a count, the per-example figures (in the row's unit) and the raw counts in MACs.

    ``counts`` is None for summarisation, whose raw counts are the per-example figures.
    """

    row: dict
    examples: pd.DataFrame
    counts: FlopCounts | None


def _describe(table: HashTable | None, model: nn.Module, method: str, model_name: str) -> dict:
    return {
        "method": method,
        "hash_method": table.method if table else "",
        "exit_layers": " ".join(map(str, table.exit_layers)) if table else "",
        "num_layers": model.num_layers,
        "model": model_name,
    }


def _check_checkpoint_options(settings: CountSettings) -> None:
    options = {
        "--model": settings.model,
        "--method": settings.method,
        "--hash-table": settings.hash_table,
        "--num-layers": settings.num_layers,
        "--run": settings.run,
        "--task": settings.data_options.get("task"),
    }
    conflicting = [option for option, value in options.items() if value is not None]
    if conflicting:
        raise HasheeError(
            f"a checkpoint fixes its model, method, task and run name; drop {', '.join(conflicting)} "
            "or count a backbone without the checkpoint argument"
        )


def _load_from_checkpoint(settings: CountSettings, device) -> LoadedModel:
    _check_checkpoint_options(settings)
    checkpoint = load_checkpoint(settings.checkpoint, device)
    data = DataConfig.from_dict({**checkpoint.settings.get("data", {}), **settings.data_options})
    columns = {
        "run": Path(settings.checkpoint).name,
        "checkpoint": str(settings.checkpoint),
        **_describe(checkpoint.hash_table, checkpoint.model, checkpoint.method, checkpoint.settings.get("model", "")),
    }
    return LoadedModel(checkpoint.model, checkpoint.tokenizer, checkpoint.task, data, columns)


def _resolve_method(settings: CountSettings) -> str:
    method = settings.method or ("hashee" if settings.hash_table else "full")
    if method not in METHODS:
        raise HasheeError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if method == "hashee" and not settings.hash_table:
        raise HasheeError("--method hashee needs --hash-table (build one with `hashee build-hash`), or use --method full")
    if method != "hashee" and settings.hash_table:
        raise HasheeError(f"--method {method} uses no hash table; drop --hash-table or use --method hashee")
    return method


def _load_backbone(settings: CountSettings, device) -> LoadedModel:
    method = _resolve_method(settings)
    model_name = settings.model or DEFAULT_MODEL
    data = DataConfig.from_dict(settings.data_options)
    task = resolve_task(data)
    table = load_hash_table(settings.hash_table) if settings.hash_table else None

    tokenizer = load_tokenizer(model_name)
    hf_model = load_backbone_for_task(model_name, task, settings.num_layers)
    if method == "multi-exit":
        model = MultiExitModel(hf_model)
    else:
        assigner = None
        if table is not None:
            table.check_compatible(tokenizer, hf_model.config.num_hidden_layers, settings.hash_table)
            assigner = build_assigner(table, tokenizer, hf_model.config.vocab_size)
        model = HashEEModel(hf_model, assigner)
    model = model.to(device).eval()

    run = settings.run or (Path(settings.hash_table).stem if settings.hash_table else method)
    columns = {"run": run, "checkpoint": "", **_describe(table, model, method, model_name)}
    return LoadedModel(model, tokenizer, task, data, columns)


def _check_options(settings: CountSettings) -> tuple[str, int]:
    if settings.form not in FORMS:
        raise HasheeError(f"--form must be one of {', '.join(FORMS)}, not {settings.form!r}")
    if settings.unit not in UNITS:
        raise HasheeError(f"unknown --unit {settings.unit!r}; use macs (fvcore's flops) or flops (twice as many)")
    if settings.batch_size < 1:
        raise HasheeError(f"--batch-size must be at least 1 (got {settings.batch_size})")
    return UNITS[settings.unit]


def _uncounted_text(counts: FlopCounts) -> str:
    return "; ".join(f"{op} ({examples} examples)" for op, examples in sorted(counts.uncounted_ops.items()))


@dataclass
class PreparedCount:
    """A loaded model and the encoded split to count it on, with the unit to report in."""

    loaded: LoadedModel
    split: object
    encoded: object
    unit: str
    scale: int
    device: object

    @property
    def pad_token_id(self) -> int:
        return self.loaded.tokenizer.pad_token_id or 0


def prepare_count(settings: CountSettings) -> PreparedCount:
    """Check the options, load the model and encode the split to count."""
    unit, scale = _check_options(settings)
    device = resolve_device(settings.device)
    if settings.checkpoint is not None:
        loaded = _load_from_checkpoint(settings, device)
    else:
        loaded = _load_backbone(settings, device)
    split = subsample(load_split(loaded.data, loaded.task, settings.split, require_labels=False), settings.limit, settings.seed)
    encoded = encode_split(split, loaded.task, loaded.tokenizer, loaded.data.max_seq_length)
    return PreparedCount(loaded, split, encoded, unit, scale, device)


def summary_columns(counted: np.ndarray, analytic: np.ndarray, full_model: np.ndarray) -> dict:
    """Return the summary columns of a count row from per-example costs, all in the row's unit."""
    return {
        "counted_flops_mean": float(counted.mean()),
        "counted_flops_median": float(np.median(counted)),
        "analytic_flops_mean": float(analytic.mean()),
        "analytic_flops_median": float(np.median(analytic)),
        "counted_vs_analytic": float(counted.mean() / analytic.mean() - 1),
        "full_model_flops_mean": float(full_model.mean()),
        "counted_ratio_to_full": float(counted.mean() / full_model.mean()),
    }


def count_row(prepared: PreparedCount, settings: CountSettings, counts: FlopCounts, form: str, extra: dict | None = None) -> CountResult:
    """Build the CSV row and the per-example table of ``counts`` (in MACs), in the unit of ``prepared``.

    ``extra`` columns (the setting of an early-exit sweep) follow the key columns.
    """
    loaded, scale, unit = prepared.loaded, prepared.scale, prepared.unit
    counted, analytic = counts.counted * scale, counts.analytic * scale
    counted_layers, analytic_layers = counts.counted_layers * scale, counts.analytic_layers * scale
    full_model = counts.full_model * scale
    row = {
        "run": loaded.columns["run"],
        "checkpoint": loaded.columns["checkpoint"],
        "task": loaded.task.name,
        "split": settings.split,
        **(extra or {}),
        **{name: value for name, value in loaded.columns.items() if name not in ("run", "checkpoint")},
        "form": form,
        "num_examples": counts.num_examples,
        "num_truncated": prepared.encoded.num_truncated,
        "flops_unit": unit,
        **summary_columns(counted, analytic, full_model),
        **{f"counted_flops_layer_{layer}": float(value) for layer, value in enumerate(counted_layers.mean(axis=0), start=1)},
        "counted_flops_other": float(counts.counted_other.mean() * scale),
        **{f"analytic_flops_layer_{layer}": float(value) for layer, value in enumerate(analytic_layers.mean(axis=0), start=1)},
        "analytic_flops_other": float(counts.analytic_other.mean() * scale),
        "uncounted_ops": _uncounted_text(counts),
        "counter": f"fvcore {importlib.metadata.version('fvcore')}",
        "limit": settings.limit if settings.limit is not None else "",
        "seed": settings.seed,
        "max_seq_length": loaded.data.max_seq_length,
        "device": str(prepared.device),
    }
    examples = pd.DataFrame(
        {
            "line": prepared.split.line_numbers,
            **(extra or {}),
            "num_tokens": counts.num_tokens,
            "counted_flops": counted,
            "analytic_flops": analytic,
            "full_model_flops": full_model,
            "flops_unit": unit,
        }
    )
    return CountResult(row, examples, counts)


def count_flops(settings: CountSettings, on_example=None) -> CountResult:
    """Count the cost of every example of a split, with fvcore and with the analytic model."""
    if settings.checkpoint is not None and is_summarization_checkpoint(settings.checkpoint):
        unit, scale = _check_options(settings)
        _check_checkpoint_options(settings)
        return count_summarizer(settings, unit, scale, on_example)
    if settings.checkpoint is None and DataConfig.from_dict(settings.data_options).task_spec().problem_type == "summarization":
        # NOTE: summarisation is counted on checkpoints only, because a bare backbone has no generation settings.
        raise HasheeError("count-flops counts summarisation on a checkpoint; fine-tune one with `hashee finetune` and pass it")
    prepared = prepare_count(settings)
    target = model_target(prepared.loaded.model, settings.form)
    counts = count_split(target, prepared.encoded, prepared.pad_token_id, settings.batch_size, on_example)
    return count_row(prepared, settings, counts, target.form)
