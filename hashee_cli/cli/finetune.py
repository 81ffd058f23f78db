"""`hashee finetune`: fine-tune a backbone with a hash table (or the full model) and save a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hashee_cli.cli.common import (
    DataDirOption,
    DevFileOption,
    DeviceOption,
    HubConfigOption,
    HubDatasetOption,
    LabelColumnOption,
    MaxSeqLengthOption,
    ModelOption,
    ProblemTypeOption,
    RichTrainingProgress,
    SeedOption,
    TaskOption,
    TestFileOption,
    TextColumnOption,
    TrainFileOption,
    data_config,
    emit_json,
    handle_errors,
    info,
    parse_int_list,
    print_table,
    state,
)
from hashee_cli.finetuning import FinetuneSettings, finetune as run_finetune
from hashee_cli.training import TrainingConfig


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_history(history: list[dict]) -> Table:
    table = Table(title="Epochs (dev split)", title_justify="left")
    # Records of several models (static depths, DeeBERT's stages) may differ in columns; show their union.
    columns = []
    for record in history:
        columns.extend(name for name in record if name not in ("best", "step") and "_layer_" not in name and name not in columns)
    for name in columns:
        table.add_column(name.replace("dev_", ""), justify="right")
    for record in history:
        style = "bold green" if record.get("best") else None
        table.add_row(*[_cell(record.get(name)) for name in columns], style=style)
    return table


@handle_errors
def finetune(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Checkpoint directory to write.")],
    hash_table: Annotated[
        Path | None, typer.Option(help="Hash table from `hashee build-hash`; implies --method hashee.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="hashee (token exit by --hash-table), full (the ordinary model), static (the first k layers, "
            "one model per --depths), deebert (internal classifiers trained after the model, backbone frozen), "
            "pabee or multi-exit (a classifier after every layer, trained jointly)."
        ),
    ] = None,
    model: ModelOption = "minilm-l6",
    task: TaskOption = "SST-2",
    data_dir: DataDirOption = None,
    train_file: TrainFileOption = None,
    dev_file: DevFileOption = None,
    test_file: TestFileOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    problem_type: ProblemTypeOption = "classification",
    hub_dataset: HubDatasetOption = None,
    hub_config: HubConfigOption = None,
    max_seq_length: MaxSeqLengthOption = 128,
    num_layers: Annotated[int | None, typer.Option(help="Use only the first k layers of the backbone.")] = None,
    depths: Annotated[
        str | None, typer.Option(help="With --method static: the layer counts to train, e.g. 1,2,3 (default: 1..L).")
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="With --method deebert: a --method full checkpoint to use as the first stage; only the internal classifiers are trained."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs; the best epoch on dev is kept.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size for dev evaluation.")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 5e-5,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (not applied to biases and LayerNorm).")] = 0.01,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps with linear warm-up; the rest decays linearly to 0.")] = 0.1,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 1.0,
    select_metric: Annotated[
        str | None, typer.Option(help="Dev metric that picks the best epoch (default: the task's main metric).")
    ] = None,
    train_limit: Annotated[int | None, typer.Option(help="Train on a seeded random subset of this many examples.")] = None,
    dev_limit: Annotated[int | None, typer.Option(help="Evaluate dev on a seeded random subset of this many examples.")] = None,
    seed: SeedOption = 42,
    device: DeviceOption = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Fine-tune a HashEE model or a baseline and write a Hugging Face style checkpoint directory."""
    resolved_method = method or ("hashee" if hash_table else "full")
    settings = FinetuneSettings(
        output_dir=str(output_dir),
        model=model,
        method=resolved_method,
        hash_table=str(hash_table) if hash_table else None,
        num_layers=num_layers,
        depths=parse_int_list(depths, "--depths"),
        init_from=str(init_from) if init_from else None,
        train_limit=train_limit,
        dev_limit=dev_limit,
        device=device,
        overwrite=overwrite,
        data=data_config(
            task, data_dir, train_file, dev_file, test_file, text_column, label_column, problem_type,
            hub_dataset, hub_config, max_seq_length,
        ),
        training=TrainingConfig(
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            max_grad_norm=max_grad_norm,
            seed=seed,
            select_metric=select_metric,
        ),
    )

    info(f"Fine-tuning {model} ({resolved_method}) on {task} -> {output_dir}")
    with RichTrainingProgress(epochs) as progress:
        outcome = run_finetune(settings, progress)

    history = outcome.result.history
    if state.json:
        payload = {"output_dir": str(outcome.output_dir), "best_epoch": outcome.result.best_epoch, "history": history}
        if outcome.members:
            payload["members"] = outcome.members
        emit_json(payload)
        return
    print_table(render_history(history))
    if outcome.num_truncated:
        info(f"{outcome.num_truncated} examples were longer than --max-seq-length {max_seq_length} and were truncated.")
    if outcome.members:
        depths_text = ", ".join(f"{member['depth']} ({member['best_dev_score']:.4f})" for member in outcome.members)
        info(
            f"Static curve: depths with their best dev {outcome.result.select_metric}: {depths_text}; "
            f"trained on {outcome.num_train:,} examples in {outcome.seconds:.0f} s. Wrote {outcome.output_dir}"
        )
        return
    info(
        f"Best epoch {outcome.result.best_epoch} (dev {outcome.result.select_metric} {outcome.result.best_score:.4f}); "
        f"trained on {outcome.num_train:,} examples in {outcome.seconds:.0f} s. Wrote {outcome.output_dir}"
    )
