"""Evaluate sentence-level early exit (DeeBERT, PABEE) over a sweep of thresholds or patience values.

One dense pass records every layer's logits for the whole split; each
setting of the exit rule is then replayed on the record, so a full curve
costs one forward pass. With ``online`` each setting also runs the real
early-exit forward (exited examples leave the batch), which measures its
speed and checks that its predictions match the replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hashee_cli.data.encoding import EncodedSplit, collate, evaluation_batches
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import (
    _synchronize,
    load_evaluation_data,
    prediction_labels,
    predicted_values,
    run_columns,
)
from hashee_cli.flops import UNIT, EncoderDims, early_exit_macs
from hashee_cli.metrics import compute_metrics
from hashee_cli.modeling.early_exit import EarlyExitModel, EarlyExitOutput, replay_exits
from hashee_cli.modeling.exit_rules import DEFAULT_TOLERANCE, ExitRule, build_rules
from hashee_cli.modeling.multi_exit import MultiExitModel
from hashee_cli.provenance import version_columns

# The default exit rule of each early-exit method; --exit-rule overrides it.
METHOD_RULES = {"deebert": "entropy", "pabee": "patience"}
# Regression outputs of the replay and of the real forward may differ by rounding.
REGRESSION_MATCH = 1e-4


@dataclass
class LayerRecord:
    """Every layer's logits for a split, in the split's order.

    ``all_logits`` is (L, N, C), or (L, N) for regression; ``num_tokens`` (N,)
    counts each example's non-padding tokens; ``seconds`` covers the forward passes.
    """

    all_logits: torch.Tensor
    num_tokens: torch.Tensor
    seconds: float


def _batches(encoded: EncodedSplit, batch_size: int, pad_token_id: int, device: torch.device):
    for indices in evaluation_batches(encoded.lengths, batch_size):
        batch = collate(encoded, indices, pad_token_id)
        batch.pop("labels", None)
        yield indices, {name: tensor.to(device) for name, tensor in batch.items()}


def record_layer_logits(model: MultiExitModel, encoded: EncodedSplit, batch_size: int, pad_token_id: int) -> LayerRecord:
    """Run every layer and every classifier once over ``encoded`` and keep all logits."""
    model.eval()
    device = next(model.parameters()).device
    chunks, order = [], []
    seconds = 0.0
    with torch.inference_mode():
        for indices, batch in _batches(encoded, batch_size, pad_token_id, device):
            _synchronize(device)
            start = time.perf_counter()
            output = model(**batch)
            _synchronize(device)
            seconds += time.perf_counter() - start
            chunks.append(output.all_logits.float().cpu())  # (L, B[, C])
            order.extend(indices)

    stacked = torch.cat(chunks, dim=1)  # (L, N[, C]) in batch order
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    all_logits = stacked.index_select(1, restore)  # (L, N[, C]) in split order
    num_tokens = torch.tensor(encoded.lengths, dtype=torch.long)
    return LayerRecord(all_logits, num_tokens, seconds)


def run_early_exit(
    model: MultiExitModel, rule: ExitRule, encoded: EncodedSplit, batch_size: int, pad_token_id: int
) -> tuple[EarlyExitOutput, float]:
    """Run the real early-exit forward over ``encoded``; return outputs in split order and the forward seconds."""
    model.eval()
    runner = EarlyExitModel(model, rule)
    device = next(model.parameters()).device
    logits_chunks, exit_chunks, order = [], [], []
    seconds = 0.0
    with torch.inference_mode():
        for indices, batch in _batches(encoded, batch_size, pad_token_id, device):
            _synchronize(device)
            start = time.perf_counter()
            output = runner(**batch)
            _synchronize(device)
            seconds += time.perf_counter() - start
            logits_chunks.append(output.logits.float().cpu())
            exit_chunks.append(output.exit_layers.cpu())
            order.extend(indices)

    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    logits = torch.cat(logits_chunks).index_select(0, restore)  # (N[, C])
    exit_layers = torch.cat(exit_chunks).index_select(0, restore)  # (N,)
    return EarlyExitOutput(logits, exit_layers), seconds


def layer_scores(task: TaskSpec, record: LayerRecord, targets: torch.Tensor) -> list[dict[str, float]]:
    """Return the task's metrics of each layer's classifier, layer 1 first."""
    return [
        compute_metrics(task.metrics, predicted_values(task, logits.numpy()), targets.numpy())
        for logits in record.all_logits
    ]


@dataclass
class SettingResult:
    """One setting of the exit rule applied to a split.

    ``exit_layers`` (N,) and ``logits`` (N, C) or (N,) come from the real
    forward when ``mode`` is "online", else from the replay.
    ``replay_agreement`` is the share of examples where both agree (online only).
    """

    rule: ExitRule
    mode: str
    exit_layers: np.ndarray
    logits: np.ndarray
    macs: np.ndarray
    seconds: float | None = None
    replay_agreement: float | None = None


def _agreement(task: TaskSpec, replayed: EarlyExitOutput, online: EarlyExitOutput) -> float:
    same_exit = replayed.exit_layers == online.exit_layers
    if task.problem_type == "regression":
        same_prediction = (replayed.logits - online.logits).abs() < REGRESSION_MATCH
    else:
        same_prediction = replayed.logits.argmax(dim=-1) == online.logits.argmax(dim=-1)
    return float((same_exit & same_prediction).float().mean())


def sweep_exit_rules(
    model: MultiExitModel,
    rules: list[ExitRule],
    encoded: EncodedSplit,
    task: TaskSpec,
    batch_size: int,
    pad_token_id: int,
    online: bool = False,
    record: LayerRecord | None = None,
) -> tuple[LayerRecord, list[SettingResult]]:
    """Replay every rule on one recorded pass (and, with ``online``, run each for real)."""
    if record is None:
        record = record_layer_logits(model, encoded, batch_size, pad_token_id)
    dims = EncoderDims.from_config(model.config)
    results = []
    for rule in rules:
        replayed = replay_exits(record.all_logits, rule)
        outcome, mode, seconds, agreement = replayed, "replay", None, None
        if online:
            outcome, seconds = run_early_exit(model, rule, encoded, batch_size, pad_token_id)
            mode = "online"
            agreement = _agreement(task, replayed, outcome)
        macs = early_exit_macs(dims, record.num_tokens, outcome.exit_layers)
        results.append(
            SettingResult(
                rule=rule,
                mode=mode,
                exit_layers=outcome.exit_layers.numpy(),
                logits=outcome.logits.numpy(),
                macs=macs.numpy(),
                seconds=seconds,
                replay_agreement=agreement,
            )
        )
    return record, results


@dataclass
class SweepResult:
    """One metrics row per setting, the long-format predictions, and the settings that exit nothing."""

    rows: list[dict]
    predictions: pd.DataFrame
    exits_nothing: list[str]
    record_seconds: float


def _setting_row(result: SettingResult, record: LayerRecord, task: TaskSpec, targets: torch.Tensor | None) -> dict:
    num_layers = record.all_logits.shape[0]
    exits = result.exit_layers
    tokens = record.num_tokens.numpy().astype(np.float64)
    metrics = {}
    if targets is not None:
        metrics = compute_metrics(task.metrics, predicted_values(task, result.logits), targets.numpy())
    token_share = {
        f"token_share_layer_{layer}": float(tokens[exits == layer].sum() / tokens.sum()) for layer in range(1, num_layers + 1)
    }
    columns = {"exit_rule": "", "threshold": np.nan, "patience": np.nan, "tolerance": np.nan, **result.rule.columns}
    return {
        **metrics,
        "main_metric": task.main_metric,
        "score": metrics.get(task.main_metric, float("nan")),
        "setting": result.rule.setting,
        **columns,
        "exit_mode": result.mode,
        "exited_early_share": float((exits < num_layers).mean()),
        "mean_exit_layer": float((tokens * exits).sum() / tokens.sum()),
        "mean_example_exit_layer": float(exits.mean()),
        **token_share,
        "macs_per_example": float(result.macs.mean()),
        "flops_unit": UNIT,
        "examples_per_second": len(exits) / max(result.seconds, 1e-9) if result.seconds is not None else float("nan"),
        "replay_agreement": result.replay_agreement if result.replay_agreement is not None else float("nan"),
    }


def sweep_rules(
    model,
    task: TaskSpec,
    method: str,
    checkpoint_dir: str,
    exit_rule: str | None = None,
    thresholds: list[float] | None = None,
    patience: list[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[ExitRule]:
    """Return the exit rules to sweep on a checkpoint's model; the rule defaults to the method's."""
    if not isinstance(model, MultiExitModel):
        raise HasheeError(
            f"checkpoint {checkpoint_dir} ({method}) has no internal classifiers; early exit needs a model "
            "trained with --method deebert, pabee or multi-exit"
        )
    rule_name = exit_rule or METHOD_RULES.get(method)
    if rule_name is None:
        raise HasheeError(f"checkpoint {checkpoint_dir} was trained with --method {method}; pass --exit-rule entropy or patience")
    regression = task.problem_type == "regression"
    rules = build_rules(
        rule_name,
        model.num_layers,
        1 if regression else task.num_labels,
        regression,
        thresholds=thresholds,
        patience=patience,
        tolerance=tolerance,
    )
    if not rules:
        raise HasheeError(f"a {model.num_layers}-layer model has no internal classifier to exit at; nothing to sweep")
    return rules


def evaluate_sweep(
    checkpoint_dir: str,
    split: str = "test",
    data_overrides: dict | None = None,
    batch_size: int = 64,
    device: str = "auto",
    limit: int | None = None,
    seed: int = 42,
    exit_rule: str | None = None,
    thresholds: list[float] | None = None,
    patience: list[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    online: bool = False,
) -> SweepResult:
    """Evaluate a multi-exit checkpoint at every setting of its exit rule; one metrics row per setting.

    The rule defaults to the checkpoint's method (entropy for deebert,
    patience for pabee); ``exit_rule`` picks one for any multi-exit checkpoint.
    """
    data = load_evaluation_data(checkpoint_dir, split, data_overrides, device, limit, seed)
    model = data.checkpoint.model
    task = data.task
    rules = sweep_rules(model, task, data.checkpoint.method, checkpoint_dir, exit_rule, thresholds, patience, tolerance)

    record, results = sweep_exit_rules(model, rules, data.encoded, task, batch_size, data.pad_token_id, online)
    base = run_columns(data, checkpoint_dir)
    targets = data.encoded.labels
    rows, frames, exits_nothing = [], [], []
    for result in results:
        row = {
            **base, **_setting_row(result, record, task, targets), "batch_size": batch_size, "device": str(data.device),
            "seed": seed, "train_seed": data.checkpoint.settings.get("training", {}).get("seed"), **version_columns(),
        }
        rows.append(row)
        if row["exited_early_share"] == 0:
            exits_nothing.append(result.rule.setting)
        frame = pd.DataFrame(
            {
                "line": data.loaded.line_numbers,
                "setting": result.rule.setting,
                "prediction": prediction_labels(task, result.logits),
                "exit_layer": result.exit_layers,
                "macs": result.macs,
            }
        )
        if data.loaded.labels is not None:
            frame.insert(3, "label", data.loaded.labels)
        frames.append(frame)
    return SweepResult(rows, pd.concat(frames, ignore_index=True), exits_nothing, record.seconds)
