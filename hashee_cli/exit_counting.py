"""`count-flops` for the baselines: static curves, and DeeBERT and PABEE at every setting of their exit rule.

A static curve directory is counted member by member, one row per depth.

An early-exit checkpoint gets one row per threshold or patience value, as
``evaluate`` sweeps them. fvcore traces the dense multi-exit forward once
per example, with each layer's counted cost including the classifier that
reads it. The exit layer of each example at each setting is replayed from
every layer's recorded logits, and the example's cost at that setting is the
counted cost of the embeddings plus layers and classifiers 1..e. That is
exactly the work of the real early-exit forward, which runs the same layer
modules and stops after layer e. Tests check the two against each other.
Tracing the early-exit forward itself would undercount: a trace keeps only
work that reaches its outputs, and an internal classifier's logits only
steer the exit decision, so most classifiers would drop out of the count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hashee_cli.checkpoint import check_checkpoint_files
from hashee_cli.counting import CountResult, CountSettings, count_flops, count_row, prepare_count
from hashee_cli.errors import HasheeError
from hashee_cli.exit_sweep import METHOD_RULES, record_layer_logits, sweep_rules
from hashee_cli.finetuning import curve_member_run, static_curve_members
from hashee_cli.flop_counting import Batch, CountingTarget, FlopCounts, count_split
from hashee_cli.flops import EncoderDims, early_exit_macs, embedding_macs, example_layer_macs, head_macs
from hashee_cli.modeling.early_exit import replay_exits
from hashee_cli.modeling.exit_rules import DEFAULT_TOLERANCE
from hashee_cli.modeling.multi_exit import MultiExitModel


@dataclass
class SweepOptions:
    """The exit-rule options of an early-exit count; empty values take the method's defaults."""

    exit_rule: str | None = None
    thresholds: list[float] | None = None
    patience: list[int] | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def given(self) -> bool:
        return bool(self.exit_rule or self.thresholds or self.patience)


def final_head_modules(model: MultiExitModel) -> list[torch.nn.Module]:
    """Return the modules of the backbone's own classification head: everything outside the base model, and its pooler."""
    base = model.architecture.base(model.model)
    modules = [child for child in model.model.children() if child is not base]
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        modules.append(pooler)
    return modules


def exit_target(model: MultiExitModel) -> CountingTarget:
    """Return the counting target of a multi-exit model's dense forward, each classifier counted with its layer.

    Layer l's group contains the layer and the classifier that reads it (the
    internal one, or the model's own head after the last layer), so that
    "other" is the embeddings alone and a prefix of the groups is the cost of
    exiting after that layer.
    """
    dims = EncoderDims.from_config(model.config)
    backbone_layers = model.architecture.layers(model.model)
    heads = [[head] for head in model.exit_heads] + [final_head_modules(model)]
    layer_modules = [
        [exit_layer, backbone_layer, *head] for exit_layer, backbone_layer, head in zip(model.layers, backbone_layers, heads)
    ]

    def forward(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        output = model(**batch)
        return output.logits, output.exit_layers

    def analytic_layers(exit_layers: torch.Tensor) -> torch.Tensor:
        has_tokens = (exit_layers > 0).any(dim=1, keepdim=True).to(torch.float64)  # (B, 1)
        return example_layer_macs(dims, exit_layers) + has_tokens * head_macs(dims)  # (B, L)

    def analytic_other(exit_layers: torch.Tensor) -> torch.Tensor:
        num_tokens = (exit_layers > 0).sum(dim=1).to(torch.float64)  # (B,)
        return embedding_macs(dims, num_tokens) * torch.ones_like(num_tokens)

    return CountingTarget(model, forward, analytic_layers, analytic_other, layer_modules, "dense")


def exit_costs(counts: FlopCounts, exit_layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each example's counted cost (N,) and per-layer costs (N, L) when it exits after ``exit_layers`` (N,).

    ``counts`` are those of ``exit_target``: layer groups with their classifiers, and the embeddings as the rest.
    """
    num_layers = counts.counted_layers.shape[1]
    ran = np.arange(1, num_layers + 1)[None, :] <= exit_layers[:, None]  # (N, L)
    layers = counts.counted_layers * ran  # (N, L)
    return counts.counted_other + layers.sum(axis=1), layers


def count_exit_sweep(settings: CountSettings, options: SweepOptions, on_example=None) -> list[CountResult]:
    """Count an early-exit checkpoint at every setting of its exit rule; one result per setting."""
    prepared = prepare_count(settings)
    model = prepared.loaded.model
    task = prepared.loaded.task
    method = prepared.loaded.columns["method"]
    rules = sweep_rules(
        model, task, method, settings.checkpoint, options.exit_rule, options.thresholds, options.patience, options.tolerance
    )
    if settings.form not in ("auto", "dense"):
        raise HasheeError(f"--form {settings.form} does not apply to early exit, which runs every layer it reaches densely")

    target = exit_target(model)
    dense = count_split(target, prepared.encoded, prepared.pad_token_id, settings.batch_size, on_example)
    record = record_layer_logits(model, prepared.encoded, settings.batch_size, prepared.pad_token_id)
    dims = EncoderDims.from_config(model.config)
    num_tokens = torch.as_tensor(dense.num_tokens)

    results = []
    for rule in rules:
        exits = replay_exits(record.all_logits, rule).exit_layers  # (N,)
        counted, counted_layers = exit_costs(dense, exits.numpy())
        analytic = early_exit_macs(dims, num_tokens, exits).numpy()  # (N,)
        ran = np.arange(1, dims.num_layers + 1)[None, :] <= exits.numpy()[:, None]  # (N, L)
        analytic_layers = dense.analytic_layers * ran
        counts = replace(
            dense,
            counted=counted,
            counted_layers=counted_layers,
            analytic=analytic,
            analytic_layers=analytic_layers,
        )
        extra = {"setting": rule.setting, **rule.columns, "mean_example_exit_layer": float(exits.float().mean())}
        results.append(count_row(prepared, settings, counts, f"early exit ({rule.setting})", extra))
    return results


def count_runs(settings: CountSettings, options: SweepOptions | None = None, on_example=None) -> list[CountResult]:
    """Count a checkpoint as ``evaluate`` runs it: one result, one per static depth, or one per exit setting."""
    options = options or SweepOptions()
    members = static_curve_members(Path(settings.checkpoint)) if settings.checkpoint else None
    if members is not None:
        if options.given:
            raise HasheeError(f"{settings.checkpoint} is a static curve; exit-rule options apply to deebert and pabee checkpoints")
        results = []
        for member in members:
            result = count_flops(replace(settings, checkpoint=str(member)), on_example)
            result.row["run"] = curve_member_run(settings.checkpoint, result.row["run"])
            results.append(result)
        return results
    if settings.checkpoint is not None and (options.given or _is_early_exit_checkpoint(settings.checkpoint)):
        return count_exit_sweep(settings, options, on_example)
    if options.given:
        raise HasheeError("exit-rule options need a deebert, pabee or multi-exit checkpoint")
    return [count_flops(settings, on_example)]


def _is_early_exit_checkpoint(checkpoint: str) -> bool:
    return check_checkpoint_files(Path(checkpoint)).get("method") in METHOD_RULES
