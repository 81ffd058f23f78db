"""Teacher-forced fine-tuning of a seq2seq model, best epoch by ROUGE of greedy summaries on dev.

HashEE models train in the masked form: every layer runs densely and exited
positions keep their state, so dropout and gradients behave as in the
ordinary model. Dev summaries are generated with the key/value cache in the
gathered form.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from hashee_cli.data.encoding import training_batches
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError
from hashee_cli.seq2seq.data import EncodedSummaries, collate_summaries
from hashee_cli.seq2seq.evaluation import summarize
from hashee_cli.seq2seq.generation import GenerationSettings
from hashee_cli.seq2seq.model import HashEESeq2SeqModel
from hashee_cli.seq2seq.rouge import rouge
from hashee_cli.training import SilentCallback, TrainingCallback, TrainingConfig, TrainingResult, seed_everything


def _optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    # Biases and norm weights (the 1-D parameters) take no weight decay.
    decay = [parameter for parameter in model.parameters() if parameter.requires_grad and parameter.ndim >= 2]
    no_decay = [parameter for parameter in model.parameters() if parameter.requires_grad and parameter.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def train_summarizer(
    model: HashEESeq2SeqModel,
    train_split: EncodedSummaries,
    dev_split: EncodedSummaries,
    task: TaskSpec,
    config: TrainingConfig,
    generation: GenerationSettings,
    tokenizer: PreTrainedTokenizerBase,
    callback: TrainingCallback | None = None,
) -> TrainingResult:
    """Fine-tune ``model`` on ``train_split`` and load the weights of the best epoch on ``dev_split``."""
    callback = callback or SilentCallback()
    select_metric = config.select_metric or task.main_metric
    if select_metric not in task.metrics:
        raise HasheeError(f"--select-metric {select_metric!r} is not a metric of {task.name} ({', '.join(task.metrics)})")

    seed_everything(config.seed)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    pad, start = model.pad_token_id, model.decoder_start_token_id

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
            batch = {name: tensor.to(device) for name, tensor in collate_summaries(train_split, indices, pad, start).items()}
            step += 1
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise HasheeError(
                    f"the training loss became {loss.item()} at step {step} (epoch {epoch}); lower --learning-rate"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            callback.on_step(step, loss.item(), scheduler.get_last_lr()[0])

        callback.on_evaluate_start(epoch)
        summaries = summarize(model, dev_split, tokenizer, config.eval_batch_size, generation)
        metrics = rouge(summaries.texts, dev_split.split.scored_references())
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / steps_per_epoch,
            **{f"dev_{name}": value for name, value in metrics.items()},
            "dev_mean_exit_layer_encoder": summaries.mean_exit_layer_encoder,
            "dev_mean_exit_layer_decoder": summaries.mean_exit_layer_decoder,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        current = metrics[select_metric]
        if best_state is None or (not math.isnan(current) and current > best_score):
            best_score, best_epoch = current, epoch
            best_state = copy.deepcopy(model.state_dict())
        record["best"] = epoch == best_epoch
        callback.on_epoch_end(record)

    model.load_state_dict(best_state)
    for record in history:
        record["best"] = record["epoch"] == best_epoch
    return TrainingResult(best_epoch, best_score, select_metric, history)
