"""Run a model over a split: predictions, task metrics, exit-layer statistics and throughput."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hashee_cli.checkpoint import Checkpoint, load_checkpoint
from hashee_cli.data.encoding import EncodedSplit, collate, encode_split, evaluation_batches
from hashee_cli.data.reading import DataConfig, Split, load_split, subsample
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.devices import resolve_device
from hashee_cli.flops import UNIT, EncoderDims, example_macs, head_macs
from hashee_cli.metrics import compute_metrics
from hashee_cli.modeling.model import Form
from hashee_cli.provenance import version_columns


@dataclass
class Predictions:
    """Outputs for every example of a split, in the split's order.

    ``logits`` is (N, C) for classification and (N,) for regression.
    ``tokens_per_layer[l]`` counts the non-padding tokens whose exit layer is
    l (index 0 is unused). ``example_macs`` is the analytic cost of each
    example run alone (see ``hashee_cli.flops``). ``seconds`` covers the
    forward passes only.
    """

    logits: np.ndarray
    tokens_per_layer: np.ndarray
    example_exit_means: np.ndarray
    example_macs: np.ndarray
    seconds: float

    @property
    def num_examples(self) -> int:
        return len(self.logits)

    @property
    def mean_exit_layer(self) -> float:
        layers = np.arange(len(self.tokens_per_layer))
        return float((layers * self.tokens_per_layer).sum() / max(self.tokens_per_layer.sum(), 1))

    def token_share(self) -> dict[int, float]:
        total = max(int(self.tokens_per_layer.sum()), 1)
        return {layer: float(self.tokens_per_layer[layer] / total) for layer in range(1, len(self.tokens_per_layer))}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict(
    model: torch.nn.Module, encoded: EncodedSplit, batch_size: int, pad_token_id: int, form: Form = "auto"
) -> Predictions:
    """Run the model in eval mode over ``encoded`` in length-sorted batches and restore the split's order.

    ``model`` is a HashEEModel or MultiExitModel (scored by its last layer).
    """
    model.eval()
    device = next(model.parameters()).device
    num_layers = model.num_layers

    dims = EncoderDims.from_config(model.config)
    # A multi-exit model also runs the internal classifiers of layers 1..L-1.
    extra_head_macs = head_macs(dims) * len(getattr(model, "exit_heads", []))

    logits_by_example: list[np.ndarray | None] = [None] * len(encoded)
    exit_means = np.zeros(len(encoded))
    macs = np.zeros(len(encoded))
    tokens_per_layer = torch.zeros(num_layers + 1, dtype=torch.long, device=device)
    seconds = 0.0

    with torch.inference_mode():
        for indices in evaluation_batches(encoded.lengths, batch_size):
            batch = collate(encoded, indices, pad_token_id)
            batch.pop("labels", None)
            batch = {name: tensor.to(device) for name, tensor in batch.items()}

            _synchronize(device)
            start = time.perf_counter()
            output = model(**batch, form=form)
            _synchronize(device)
            seconds += time.perf_counter() - start

            exit_layers = output.exit_layers  # (B, T), 0 for padding
            tokens_per_layer += torch.bincount(exit_layers.flatten(), minlength=num_layers + 1)[: num_layers + 1]
            valid = batch["attention_mask"].sum(dim=1).clamp(min=1)
            batch_means = (exit_layers.sum(dim=1) / valid).cpu().numpy()
            batch_macs = (example_macs(dims, exit_layers) + extra_head_macs).cpu().numpy()
            batch_logits = output.logits.float().cpu().numpy()
            for row, index in enumerate(indices):
                logits_by_example[index] = batch_logits[row]
                exit_means[index] = batch_means[row]
                macs[index] = batch_macs[row]

    counts = tokens_per_layer.cpu().numpy()
    counts[0] = 0  # padding
    return Predictions(np.stack(logits_by_example), counts, exit_means, macs, seconds)


def predicted_values(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Return class ids (argmax over classes), 0/1 per label (multi-label) or the regression outputs."""
    if task.problem_type == "regression":
        return logits.reshape(-1)
    if task.problem_type == "multi_label":
        return (logits > 0).astype(np.int64)
    return logits.argmax(axis=-1)


def score(task: TaskSpec, predictions: Predictions, targets: torch.Tensor) -> dict[str, float]:
    """Compute the task's metrics for ``predictions`` against label ids or targets."""
    return compute_metrics(task.metrics, predicted_values(task, predictions.logits), targets.numpy())


@dataclass
class EvaluationResult:
    """One metrics row for the CSV, and the per-example predictions."""

    row: dict
    predictions: pd.DataFrame


@dataclass
class EvaluationData:
    """A checkpoint and the encoded split it is evaluated on."""

    checkpoint: Checkpoint
    split: str
    loaded: Split
    encoded: EncodedSplit
    device: torch.device

    @property
    def task(self) -> TaskSpec:
        return self.checkpoint.task

    @property
    def pad_token_id(self) -> int:
        return self.checkpoint.tokenizer.pad_token_id or 0


def load_evaluation_data(
    checkpoint_dir: str,
    split: str = "test",
    data_overrides: dict | None = None,
    device: str = "auto",
    limit: int | None = None,
    seed: int = 42,
) -> EvaluationData:
    """Load a checkpoint and tokenise the split it is evaluated on.

    ``data_overrides`` replaces fields of the data settings saved in the
    checkpoint (for example a different ``data_dir`` on another machine).
    """
    target = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_dir, target)
    data = DataConfig.from_dict({**checkpoint.settings.get("data", {}), **(data_overrides or {})})
    loaded = subsample(load_split(data, checkpoint.task, split), limit, seed)
    encoded = encode_split(loaded, checkpoint.task, checkpoint.tokenizer, data.max_seq_length)
    return EvaluationData(checkpoint, split, loaded, encoded, target)


def run_columns(data: EvaluationData, checkpoint_dir: str) -> dict:
    """Return the leading columns of a metrics row: which run, task, method, model and split."""
    checkpoint = data.checkpoint
    table = checkpoint.hash_table
    return {
        "run": Path(checkpoint_dir).name,
        "checkpoint": str(checkpoint_dir),
        "task": data.task.name,
        "method": checkpoint.method,
        "hash_method": table.method if table else "",
        "exit_layers": " ".join(map(str, table.exit_layers)) if table else "",
        "num_layers": checkpoint.model.num_layers,
        "model": checkpoint.settings.get("model", ""),
        "split": data.split,
        "num_examples": len(data.encoded),
        "num_truncated": data.encoded.num_truncated,
    }


def prediction_labels(task: TaskSpec, logits: np.ndarray) -> list:
    """Return label strings for classification, or the regression outputs as floats."""
    values = predicted_values(task, logits)
    if task.problem_type == "classification":
        return [task.labels[int(value)] for value in values]
    return values.tolist()


def evaluate_checkpoint(
    checkpoint_dir: str,
    split: str = "test",
    data_overrides: dict | None = None,
    batch_size: int = 64,
    form: Form = "auto",
    device: str = "auto",
    limit: int | None = None,
    seed: int = 42,
) -> EvaluationResult:
    """Evaluate a checkpoint on one split and return its metrics row and predictions.

    ``data_overrides`` replaces fields of the data settings saved in the
    checkpoint (for example a different ``data_dir`` on another machine).
    """
    data = load_evaluation_data(checkpoint_dir, split, data_overrides, device, limit, seed)
    task, encoded, loaded = data.task, data.encoded, data.loaded
    predictions = predict(data.checkpoint.model, encoded, batch_size, data.pad_token_id, form)

    metrics = score(task, predictions, encoded.labels) if encoded.labels is not None else {}
    row = {
        **run_columns(data, checkpoint_dir),
        **metrics,
        "main_metric": task.main_metric,
        "score": metrics.get(task.main_metric, float("nan")),
        "mean_exit_layer": predictions.mean_exit_layer,
        **{f"token_share_layer_{layer}": share for layer, share in predictions.token_share().items()},
        "macs_per_example": float(predictions.example_macs.mean()),
        "flops_unit": UNIT,
        "examples_per_second": predictions.num_examples / max(predictions.seconds, 1e-9),
        "batch_size": batch_size,
        "form": form,
        "device": str(data.device),
        "seed": seed,
        "train_seed": data.checkpoint.settings.get("training", {}).get("seed"),
        **version_columns(),
    }

    frame = pd.DataFrame(
        {
            "line": loaded.line_numbers,
            "prediction": prediction_labels(task, predictions.logits),
            "mean_exit_layer": predictions.example_exit_means,
            "macs": predictions.example_macs,
        }
    )
    if loaded.labels is not None:
        frame.insert(2, "label", loaded.labels)
    for column, name in enumerate(("text", "text_pair")[: len(loaded.texts)]):
        frame[name] = loaded.texts[column]
    return EvaluationResult(row, frame)
