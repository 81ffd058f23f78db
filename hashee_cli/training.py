"""Fine-tuning loop: AdamW with linear warm-up and decay, gradient clipping, best epoch on dev.

The same loop runs in one process or in several under torchrun (distributed
data parallel). Every process trains on its share of each global batch, so
the processes together take the steps that one process would take with the
same --batch-size. The loop writes resumable checkpoints at epoch ends (and
every ``save_steps`` steps), resumes from one exactly, and stops cleanly
between steps on request.

The loop never prints. It reports progress through a ``TrainingCallback``,
which the command line renders with rich.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_linear_schedule_with_warmup

from hashee_cli.data.encoding import EncodedSplit, collate, shard_batch, training_batches
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.devices import Precision
from hashee_cli.distributed import DistributedContext
from hashee_cli.errors import HasheeError
from hashee_cli.evaluation import Predictions, predict, score
from hashee_cli.training_checkpoints import (
    CheckpointManager,
    LoopState,
    TrainingCheckpoint,
    capture_rng_state,
    restore_rng_state,
)


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
    def on_train_start(self, total_steps: int, steps_per_epoch: int, first_step: int = 0) -> None: ...

    def on_step(self, step: int, loss: float, learning_rate: float) -> None: ...

    def on_evaluate_start(self, epoch: int) -> None: ...

    def on_epoch_end(self, record: dict) -> None: ...


# Scores a model on the dev split: returns (metrics by name, mean exit layer).
DevEvaluator = Callable[[torch.nn.Module], tuple[dict[str, float], float]]


class SilentCallback:
    def on_train_start(self, total_steps: int, steps_per_epoch: int, first_step: int = 0) -> None:
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
    resumed_from_step: int | None = None
    last_checkpoint: Path | None = None


class StopRequest:
    """A request to stop training, set from a signal handler and honoured after the current step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        self.reason = reason


class TrainingInterrupted(HasheeError):
    """Training stopped on request after a complete step; ``checkpoint`` contains the state to resume from."""

    def __init__(self, reason: str, step: int, epoch: int, checkpoint: Path | None):
        self.reason = reason
        self.step = step
        self.epoch = epoch
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint} holds its state; continue with --resume" if checkpoint else "no checkpoint was written"
        super().__init__(f"training stopped on {reason} after step {step} (epoch {epoch}); {where}")


class NonFiniteLossError(HasheeError):
    """The loss or the gradient norm became NaN or infinite; the weights were not updated with it."""


@dataclass
class TrainingRuntime:
    """Execution settings of one run: processes, precision, checkpoints, the checkpoint it resumes, stop requests.

    ``run_settings`` are stored in every checkpoint so that a resume can be
    checked against the arguments of the original run.
    """

    distributed: DistributedContext | None = None
    precision: Precision = field(default_factory=Precision)
    checkpoints: CheckpointManager | None = None
    run_settings: dict = field(default_factory=dict)
    resume_from: TrainingCheckpoint | None = None
    stop: StopRequest | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN to expose reads of
    # uninitialised memory; on CPU (torch 2.13) that made LSTM training steps
    # about 8 times slower, and no kernel used here reads such memory.
    torch.utils.deterministic.fill_uninitialized_memory = False


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


def _weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # One independent CPU tensor per name, so the copy survives further training and saves as safetensors.
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def _improves(score: float, best: float | None) -> bool:
    # A NaN score (an undefined correlation, say) never counts as an improvement, and any number beats NaN.
    if math.isnan(score):
        return False
    return best is None or math.isnan(best) or score > best


def predict_distributed(
    model: torch.nn.Module,
    encoded: EncodedSplit,
    batch_size: int,
    pad_token_id: int,
    context: DistributedContext,
) -> Predictions:
    """Run ``predict`` on every process's share of ``encoded`` and return the whole split's predictions on each."""
    if not context.enabled:
        return predict(model, encoded, batch_size, pad_token_id)
    positions = list(range(context.rank, len(encoded), context.world_size))
    piece = predict(model, encoded.select(positions), batch_size, pad_token_id) if positions else None
    pieces = context.all_gather((positions, piece))

    present = [(where, part) for where, part in pieces if part is not None]
    first = present[0][1]
    logits = np.zeros((len(encoded), *first.logits.shape[1:]), dtype=first.logits.dtype)
    exit_means = np.zeros(len(encoded))
    macs = np.zeros(len(encoded))
    tokens_per_layer = np.zeros_like(first.tokens_per_layer)
    for where, part in present:
        logits[where] = part.logits
        exit_means[where] = part.example_exit_means
        macs[where] = part.example_macs
        tokens_per_layer += part.tokens_per_layer
    # The processes run side by side, so the slowest one is the split's time.
    seconds = max(part.seconds for _, part in present)
    return Predictions(logits, tokens_per_layer, exit_means, macs, seconds)


class _Trainer:
    """One run of the loop: the model and its optimizer, the loop state, and checkpoint and stop handling."""

    def __init__(
        self,
        model: torch.nn.Module,
        train_split: EncodedSplit,
        dev_split: EncodedSplit,
        task: TaskSpec,
        config: TrainingConfig,
        pad_token_id: int,
        callback: TrainingCallback,
        runtime: TrainingRuntime,
        select_metric: str,
        dev_evaluator: DevEvaluator | None = None,
    ):
        self.model = model
        self.dev_evaluator = dev_evaluator
        self.train_split = train_split
        self.dev_split = dev_split
        self.task = task
        self.config = config
        self.pad_token_id = pad_token_id
        self.callback = callback
        self.runtime = runtime
        self.select_metric = select_metric
        self.device = next(model.parameters()).device
        self.context = runtime.distributed or DistributedContext(device=self.device)
        self.precision = runtime.precision
        self.checkpoints = runtime.checkpoints

        self.steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = _optimizer(model, config)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps
        )
        # NOTE: float16 with loss scaling exists on CUDA only, which the tests do not reach.
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if self.precision.uses_grad_scaler else None

        self.loop = LoopState()
        self.best_state: dict[str, torch.Tensor] | None = None
        # One generator draws the data order of every epoch in turn. A checkpoint stores its state
        # from before the current epoch's draw.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch_order_state = self.generator.get_state()
        self.last_checkpoint: Path | None = None
        self.resumed_from_step: int | None = None

        resume = runtime.resume_from
        if resume is not None:
            self._restore(resume)
        self.ddp_model = self._wrap(model)
        if resume is not None:
            # Restored last, after DistributedDataParallel's start-up, so nothing in between can advance the streams.
            restore_rng_state(resume.rng_states[self.context.rank], self.device)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.context.enabled:
            return model
        # No buffer changes during training (no batch norm), so none is broadcast at every step.
        # NOTE: a method that leaves parameters out of some forward passes must set
        # ``find_unused_parameters = True`` on its model, or DistributedDataParallel fails at the next step.
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=getattr(model, "find_unused_parameters", False),
        )

    def _restore(self, checkpoint: TrainingCheckpoint) -> None:
        if len(checkpoint.rng_states) != self.context.world_size:
            raise HasheeError(
                f"checkpoint {checkpoint.path} was written by {len(checkpoint.rng_states)} processes, "
                f"this run has {self.context.world_size}; resume with the original number of processes"
            )
        checkpoint.load_model_weights(self.model)
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer_state)
            self.scheduler.load_state_dict(checkpoint.scheduler_state)
            if self.grad_scaler is not None and checkpoint.grad_scaler_state is not None:
                self.grad_scaler.load_state_dict(checkpoint.grad_scaler_state)
        except (ValueError, KeyError, RuntimeError) as error:
            raise HasheeError(
                f"checkpoint {checkpoint.path} does not fit this model and optimizer ({error}); "
                "resume with the arguments of the original run"
            ) from error
        self.loop = checkpoint.loop
        self.best_state = checkpoint.best_state
        self.epoch_order_state = checkpoint.data_order_state
        self.last_checkpoint = checkpoint.path
        self.resumed_from_step = checkpoint.step

    def run(self) -> TrainingResult:
        self.callback.on_train_start(self.total_steps, self.steps_per_epoch, first_step=self.loop.step)
        for epoch in range(self.loop.epoch, self.config.epochs + 1):
            self._run_epoch(epoch)

        if self.best_state is None:
            raise HasheeError("training ended without a dev evaluation; --epochs must be at least 1")
        self.model.load_state_dict(self.best_state)
        history = self.loop.history
        for record in history:
            record["best"] = record["epoch"] == self.loop.best_epoch
        return TrainingResult(
            self.loop.best_epoch,
            self.loop.best_score if self.loop.best_score is not None else math.nan,
            self.select_metric,
            history,
            self.resumed_from_step,
            self.last_checkpoint,
        )

    def _run_epoch(self, epoch: int) -> None:
        self.model.train()
        epoch_start = time.perf_counter()
        self.generator.set_state(self.epoch_order_state)
        batches = training_batches(self.train_split.lengths, self.config.batch_size, self.generator)
        next_order_state = self.generator.get_state()

        # A resumed epoch skips the batches that the checkpoint's steps already trained on.
        for position in range(self.loop.batches_done, len(batches)):
            step = self.loop.step + 1
            loss, stop_requested = self._step(batches[position], step, epoch)
            self.loop.step = step
            self.loop.batches_done = position + 1
            self.loop.loss_sum += loss
            self.callback.on_step(step, loss, self.scheduler.get_last_lr()[0])

            if stop_requested:
                self._save_checkpoint()
                raise TrainingInterrupted(self._stop_reason(), step, epoch, self.last_checkpoint)
            save_steps = self.checkpoints.save_steps if self.checkpoints else 0
            # The epoch's last step gets the epoch-end checkpoint instead, after dev evaluation.
            if save_steps and step % save_steps == 0 and position + 1 < len(batches):
                self._save_checkpoint()

        self.callback.on_evaluate_start(epoch)
        with self.precision.autocast(self.device):
            if self.dev_evaluator is None:
                predictions = predict_distributed(
                    self.model, self.dev_split, self.config.eval_batch_size, self.pad_token_id, self.context
                )
                metrics = score(self.task, predictions, self.dev_split.labels)
                mean_exit_layer = predictions.mean_exit_layer
            else:
                # Every process scores the whole dev split itself, so all of them pick the same best epoch.
                metrics, mean_exit_layer = self.dev_evaluator(self.model)
        record = {
            "epoch": epoch,
            "step": self.loop.step,
            "train_loss": self.loop.loss_sum / self.steps_per_epoch,
            **{f"dev_{name}": value for name, value in metrics.items()},
            "dev_mean_exit_layer": mean_exit_layer,
            "seconds": time.perf_counter() - epoch_start,
        }
        self.loop.history.append(record)

        current = metrics[self.select_metric]
        if self.best_state is None or _improves(current, self.loop.best_score):
            self.loop.best_score = current
            self.loop.best_epoch = epoch
            self.best_state = _weights_copy(self.model)
        record["best"] = epoch == self.loop.best_epoch

        self.loop.epoch = epoch + 1
        self.loop.batches_done = 0
        self.loop.loss_sum = 0.0
        self.epoch_order_state = next_order_state
        self._save_checkpoint()
        self.callback.on_epoch_end(record)

        # A stop request that arrived during evaluation takes effect here; after the last epoch only the
        # final save remains, so training finishes instead.
        if epoch < self.config.epochs and self.context.any_true(self._stop_requested()):
            raise TrainingInterrupted(self._stop_reason(), self.loop.step, epoch, self.last_checkpoint)

    def _step(self, global_batch: list[int], step: int, epoch: int) -> tuple[float, bool]:
        """Train on one global batch; return its mean loss and whether any process asked to stop."""
        context = self.context
        indices = shard_batch(global_batch, context.rank, context.world_size)
        count = len(indices)
        if not indices:
            # A global batch smaller than the number of processes: this process still takes part in the
            # gradient all-reduce, with one example whose loss is weighted 0.
            indices = global_batch[:1]
        # DistributedDataParallel averages gradients over processes. Weighting each process's mean loss by its
        # share of the global batch makes that average the gradient of the global batch's mean loss.
        weight = count * context.world_size / len(global_batch)

        batch = {name: tensor.to(self.device) for name, tensor in collate(self.train_split, indices, self.pad_token_id).items()}
        with self.precision.autocast(self.device):
            # The salt gives random-inconsistent tables fresh draws at every step.
            output = self.ddp_model(**batch, salt=step)
        loss = output.loss.float()
        loss_sum, stop_votes = context.all_reduce_sum([loss.item() * count, float(self._stop_requested())])
        mean_loss = loss_sum / len(global_batch)
        if not math.isfinite(mean_loss):
            raise self._non_finite("training loss", mean_loss, step, epoch)

        scaled = loss * weight
        if self.grad_scaler is not None:
            self.grad_scaler.scale(scaled).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            scaled.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        if self.grad_scaler is not None:
            # The scaler skips steps whose float16 gradients overflowed and lowers the loss scale.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            if not torch.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise self._non_finite("gradient norm", grad_norm.item(), step, epoch)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, stop_votes > 0

    def _non_finite(self, what: str, value: float, step: int, epoch: int) -> NonFiniteLossError:
        if self.last_checkpoint is not None:
            kept = f"The last good checkpoint, {self.last_checkpoint}, is kept."
        else:
            kept = "No checkpoint had been written yet."
        return NonFiniteLossError(
            f"the {what} became {value} at step {step} (epoch {epoch}), so training stopped before updating "
            f"the weights with it. {kept} Lower --learning-rate or check the labels, then start again "
            "(--overwrite discards the old checkpoints)"
        )

    def _stop_requested(self) -> bool:
        return self.runtime.stop is not None and self.runtime.stop.requested

    def _stop_reason(self) -> str:
        if self.runtime.stop is not None and self.runtime.stop.reason:
            return self.runtime.stop.reason
        return "a request from another process"

    def _save_checkpoint(self) -> None:
        """Write a checkpoint of the current state on the main process; every process learns whether it worked."""
        if self.checkpoints is None:
            return
        context = self.context
        rng_states = context.all_gather(capture_rng_state(self.device))
        failure: HasheeError | None = None
        if context.is_main:
            try:
                self.checkpoints.save(
                    self.loop,
                    self.runtime.run_settings,
                    self.model,
                    self.best_state,
                    self.optimizer,
                    self.scheduler,
                    self.grad_scaler,
                    rng_states,
                    self.epoch_order_state,
                )
            except HasheeError as error:
                failure = error
        if not context.all_agree(failure is None):
            raise failure or HasheeError("process 0 failed to write a checkpoint; see its error message")
        self.last_checkpoint = self.checkpoints.path_for(self.loop.step)


def train(
    model: torch.nn.Module,
    train_split: EncodedSplit,
    dev_split: EncodedSplit,
    task: TaskSpec,
    config: TrainingConfig,
    pad_token_id: int,
    callback: TrainingCallback | None = None,
    dev_evaluator: DevEvaluator | None = None,
    runtime: TrainingRuntime | None = None,
) -> TrainingResult:
    """Fine-tune ``model`` on ``train_split`` and load the weights of the best epoch on ``dev_split``.

    ``model`` is a HashEEModel or MultiExitModel: its forward takes a batch
    and returns an output with ``loss``, ``logits`` and ``exit_layers``.

    HashEE models train in the masked form, so dropout and gradients behave
    as in the ordinary model; dev evaluation uses the gathered form.
    ``dev_evaluator`` replaces the dev scoring of the model's final logits,
    for models whose trained part is not the last layer's classifier.

    ``runtime`` sets processes, precision, checkpoints, resume and stop
    requests; without it the run is one float32 process without checkpoints.
    Raises TrainingInterrupted after a requested stop and NonFiniteLossError
    when the loss becomes NaN or infinite.
    """
    runtime = runtime or TrainingRuntime()
    select_metric = config.select_metric or task.main_metric
    if select_metric not in task.metrics:
        raise HasheeError(f"--select-metric {select_metric!r} is not a metric of {task.name} ({', '.join(task.metrics)})")

    rank = runtime.distributed.rank if runtime.distributed else 0
    # Each process gets its own dropout stream; process 0's matches a one-process run.
    seed_everything(config.seed + rank)
    trainer = _Trainer(
        model, train_split, dev_split, task, config, pad_token_id, callback or SilentCallback(), runtime, select_metric,
        dev_evaluator,
    )
    return trainer.run()
