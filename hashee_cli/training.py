"""Fine-tuning loop: AdamW with linear warm-up and decay, gradient clipping, best epoch on dev.

The loop never prints. It reports progress through a ``TrainingCallback``,
which the command line renders with rich.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from hashee_cli.data.encoding import EncodedSplit, collate, training_batches
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import predict, score


@dataclass
class TrainingConfig:
    """Optimisation settings of one fine-tuning run."""

    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    select_metric: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.eval_batch_size >= 1, f"--eval-batch-size must be at least 1 (got {self.eval_batch_size})"),
            (self.learning_rate > 0, f"--learning-rate must be positive (got {self.learning_rate})"),
            (self.weight_decay >= 0, f"--weight-decay must be non-negative (got {self.weight_decay})"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})"),
            (self.max_grad_norm > 0, f"--max-grad-norm must be positive (got {self.max_grad_norm})"),
        ]
        for valid, message in checks:
            if not valid:
                raise HasheeError(message)

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingCallback(Protocol):
    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None: ...

    def on_step(self, step: int, loss: float, learning_rate: float) -> None: ...

    def on_evaluate_start(self, epoch: int) -> None: ...

    def on_epoch_end(self, record: dict) -> None: ...


# Scores a model on the dev split: returns (metrics by name, mean exit layer).
DevEvaluator = Callable[[torch.nn.Module], tuple[dict[str, float], float]]


class SilentCallback:
    def on_train_start(self, total_steps: int, steps_per_epoch: int) -> None:
        pass

    def on_step(self, step: int, loss: float, learning_rate: float) -> None:
        pass

    def on_evaluate_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, record: dict) -> None:
        pass


@dataclass
class TrainingResult:
    """The best epoch's weights and every epoch's record."""

    best_epoch: int
    best_score: float
    select_metric: str
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    # Biases and LayerNorm weights take no weight decay, as in BERT fine-tuning.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def train(
    model: torch.nn.Module,
    train_split: EncodedSplit,
    dev_split: EncodedSplit,
    task: TaskSpec,
    config: TrainingConfig,
    pad_token_id: int,
    callback: TrainingCallback | None = None,
    dev_evaluator: DevEvaluator | None = None,
) -> TrainingResult:
    """Fine-tune ``model`` on ``train_split`` and load the weights of the best epoch on ``dev_split``.

    ``model`` is a HashEEModel or MultiExitModel: its forward takes a batch
    and returns an output with ``loss``, ``logits`` and ``exit_layers``.

    HashEE models train in the masked form, so dropout and gradients behave
    as in the ordinary model; dev evaluation uses the gathered form.
    ``dev_evaluator`` replaces the dev scoring of the model's final logits,
    for models whose trained part is not the last layer's classifier.
    """
    callback = callback or SilentCallback()
    select_metric = config.select_metric or task.main_metric
    if select_metric not in task.metrics:
        raise HasheeError(f"--select-metric {select_metric!r} is not a metric of {task.name} ({', '.join(task.metrics)})")

    seed_everything(config.seed)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)

    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    callback.on_train_start(total_steps, steps_per_epoch)

    best_state: dict | None = None
    best_score = -math.inf
    best_epoch = 0
    history = []
    step = 0

    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        loss_sum = 0.0

        for indices in training_batches(train_split.lengths, config.batch_size, generator):
            batch = {name: tensor.to(device) for name, tensor in collate(train_split, indices, pad_token_id).items()}
            step += 1
            # The salt gives random-inconsistent tables fresh draws at every step.
            output = model(**batch, salt=step)
            loss = output.loss
            if not torch.isfinite(loss):
                raise HasheeError(
                    f"the training loss became {loss.item()} at step {step} (epoch {epoch}); "
                    "lower --learning-rate or check the labels"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            loss_sum += loss.item()
            callback.on_step(step, loss.item(), scheduler.get_last_lr()[0])

        callback.on_evaluate_start(epoch)
        if dev_evaluator is None:
            predictions = predict(model, dev_split, config.eval_batch_size, pad_token_id)
            metrics = score(task, predictions, dev_split.labels)
            mean_exit_layer = predictions.mean_exit_layer
        else:
            metrics, mean_exit_layer = dev_evaluator(model)
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / steps_per_epoch,
            **{f"dev_{name}": value for name, value in metrics.items()},
            "dev_mean_exit_layer": mean_exit_layer,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)

        current = metrics[select_metric]
        if best_state is None or (not math.isnan(current) and current > best_score):
            best_score = current
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        record["best"] = epoch == best_epoch
        callback.on_epoch_end(record)

    model.load_state_dict(best_state)
    for record in history:
        record["best"] = record["epoch"] == best_epoch
    return TrainingResult(best_epoch, best_score, select_metric, history)
