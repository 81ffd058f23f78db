"""Generate summaries for a split and score them: ROUGE, exit layers of both stacks, cost and speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from hashee_cli.data.encoding import evaluation_batches
from hashee_cli.data.reading import DataConfig
from hashee_cli.devices import resolve_device
from hashee_cli.evaluation import EvaluationResult
from hashee_cli.flops import UNIT
from hashee_cli.seq2seq.checkpoint import load_seq2seq_checkpoint
from hashee_cli.seq2seq.data import EncodedSummaries, collate_summaries, encode_summaries, load_summaries, subsample_summaries
from hashee_cli.seq2seq.flops import Seq2SeqCosts
from hashee_cli.seq2seq.generation import GenerationSettings, generate
from hashee_cli.seq2seq.model import HashEESeq2SeqModel
from hashee_cli.seq2seq.rouge import rouge_per_example


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Summaries:
    """Generated summaries of a split, in the split's order, with per-example statistics.

    ``generated_tokens`` counts the tokens each summary took, the end token
    included. ``*_tokens_per_layer[l]`` counts the tokens whose exit layer
    is l (index 0 unused): source tokens for the encoder, the tokens fed to
    the decoder (start token and generated tokens before the last) for the
    decoder. ``encoder_macs`` and ``decoder_macs`` are analytic costs per
    example (see ``hashee_cli.seq2seq.flops``). ``seconds`` covers generation only.
    """

    texts: list[str]
    generated_tokens: np.ndarray
    encoder_exit_means: np.ndarray
    decoder_exit_means: np.ndarray
    encoder_tokens_per_layer: np.ndarray
    decoder_tokens_per_layer: np.ndarray
    encoder_macs: np.ndarray
    decoder_macs: np.ndarray
    seconds: float

    @staticmethod
    def _mean_layer(counts: np.ndarray) -> float:
        return float((np.arange(len(counts)) * counts).sum() / max(counts.sum(), 1))

    @property
    def mean_exit_layer_encoder(self) -> float:
        return self._mean_layer(self.encoder_tokens_per_layer)

    @property
    def mean_exit_layer_decoder(self) -> float:
        return self._mean_layer(self.decoder_tokens_per_layer)

    @property
    def mean_exit_layer(self) -> float:
        return self._mean_layer(self.encoder_tokens_per_layer + self.decoder_tokens_per_layer)


def summarize(
    model: HashEESeq2SeqModel,
    encoded: EncodedSummaries,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    settings: GenerationSettings,
    form: str = "auto",
) -> Summaries:
    """Generate a summary for every document of ``encoded`` in length-sorted batches and restore the split's order."""
    model.eval()
    device = next(model.parameters()).device
    costs = Seq2SeqCosts.from_model(model)
    count = len(encoded)
    texts: list[str] = [""] * count
    generated = np.zeros(count, dtype=np.int64)
    encoder_means, decoder_means = np.zeros(count), np.zeros(count)
    encoder_macs, decoder_macs = np.zeros(count), np.zeros(count)
    layers = model.num_layers + 1
    encoder_counts = torch.zeros(layers, dtype=torch.long, device=device)
    decoder_counts = torch.zeros(layers, dtype=torch.long, device=device)
    seconds = 0.0

    for indices in evaluation_batches(encoded.lengths, batch_size):
        batch = collate_summaries(encoded, indices, model.pad_token_id, model.decoder_start_token_id)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        _synchronize(device)
        start = time.perf_counter()
        output = generate(model, input_ids, attention_mask, settings, form=form, costs=costs)
        _synchronize(device)
        seconds += time.perf_counter() - start

        # Exit layers of the tokens fed to the decoder: the start token and every generated token but the last.
        fed = output.sequences[:, :-1]  # (B, M)
        fed_valid = torch.arange(fed.shape[1], device=device).unsqueeze(0) < output.lengths.unsqueeze(1)  # (B, M)
        with torch.inference_mode():
            decoder_exits = model.assign_decoder_exit_layers(fed, fed_valid)  # (B, M), 0 past the end
        encoder_exits = output.encoder_exit_layers  # (B, S), 0 for padding
        encoder_counts += torch.bincount(encoder_exits.flatten(), minlength=layers)[:layers]
        decoder_counts += torch.bincount(decoder_exits.flatten(), minlength=layers)[:layers]
        encoder_batch_means = (encoder_exits.sum(dim=1) / attention_mask.sum(dim=1).clamp(min=1)).cpu().numpy()
        decoder_batch_means = (decoder_exits.sum(dim=1) / output.lengths.clamp(min=1)).cpu().numpy()

        decoded = tokenizer.batch_decode(output.sequences[:, 1:].cpu(), skip_special_tokens=True)
        lengths = output.lengths.cpu().numpy()
        source_costs, target_costs = output.encoder_macs.cpu().numpy(), output.decoder_macs.cpu().numpy()
        for row, index in enumerate(indices):
            texts[index] = decoded[row].strip()
            generated[index] = lengths[row]
            encoder_means[index], decoder_means[index] = encoder_batch_means[row], decoder_batch_means[row]
            encoder_macs[index], decoder_macs[index] = source_costs[row], target_costs[row]

    encoder_counts, decoder_counts = encoder_counts.cpu().numpy(), decoder_counts.cpu().numpy()
    encoder_counts[0] = decoder_counts[0] = 0  # padding
    return Summaries(
        texts, generated, encoder_means, decoder_means, encoder_counts, decoder_counts, encoder_macs, decoder_macs, seconds
    )


def evaluate_summarizer(
    checkpoint_dir: str,
    split: str = "test",
    data_overrides: dict | None = None,
    generation_overrides: dict | None = None,
    batch_size: int = 16,
    form: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    seed: int = 42,
) -> EvaluationResult:
    """Generate summaries for one split with a checkpoint and return its metrics row and per-example outputs.

    A split without a summary column is only generated: the row then has no
    ROUGE columns, ``score`` is NaN and ``references`` is empty.
    ``generation_overrides`` replaces fields of ``GenerationSettings`` (None
    values are ignored); ``max_new_tokens`` defaults to the checkpoint's
    maximum target length.
    """
    target = resolve_device(device)
    checkpoint = load_seq2seq_checkpoint(checkpoint_dir, target)
    data = DataConfig.from_dict({**checkpoint.settings.get("data", {}), **(data_overrides or {})})
    chosen = {name: value for name, value in (generation_overrides or {}).items() if value is not None}
    generation = GenerationSettings(**{"max_new_tokens": data.max_target_length, **chosen})
    model, task = checkpoint.model, checkpoint.task
    model.check_lengths(data.max_seq_length, max(data.max_target_length, generation.max_new_tokens))

    loaded = subsample_summaries(load_summaries(data, task, split, require_summaries=False), limit, seed)
    encoded = encode_summaries(
        loaded, checkpoint.tokenizer, data.max_seq_length, data.max_target_length, model.decoder_start_token_id
    )
    summaries = summarize(model, encoded, checkpoint.tokenizer, batch_size, generation, form)

    metrics: dict[str, float] = {}
    per_example: dict[str, np.ndarray] = {}
    if loaded.references is not None:
        per_example = rouge_per_example(summaries.texts, loaded.scored_references())
        metrics = {name: float(values.mean()) for name, values in per_example.items()}

    table = checkpoint.hash_table
    total_macs = summaries.encoder_macs + summaries.decoder_macs
    total_tokens = int(summaries.generated_tokens.sum())
    row = {
        "run": Path(checkpoint_dir).name,
        "checkpoint": str(checkpoint_dir),
        "task": task.name,
        "method": checkpoint.method,
        "hash_method": table.method if table else "",
        "exit_layers": " ".join(map(str, table.exit_layers)) if table else "",
        "num_layers": model.num_layers,
        "model": checkpoint.settings.get("model", ""),
        "split": split,
        "num_examples": len(encoded),
        "num_truncated": encoded.num_truncated_documents,
        "references": " ".join(loaded.reference_columns),
        **metrics,
        "main_metric": task.main_metric,
        "score": metrics.get(task.main_metric, float("nan")),
        "mean_exit_layer": summaries.mean_exit_layer,
        "mean_exit_layer_encoder": summaries.mean_exit_layer_encoder,
        "mean_exit_layer_decoder": summaries.mean_exit_layer_decoder,
        "macs_per_example": float(total_macs.mean()),
        "encoder_macs_per_example": float(summaries.encoder_macs.mean()),
        "macs_per_generated_token": float(summaries.decoder_macs.sum() / max(total_tokens, 1)),
        "flops_unit": UNIT,
        "generated_tokens_per_example": float(summaries.generated_tokens.mean()),
        "tokens_per_second": total_tokens / max(summaries.seconds, 1e-9),
        "examples_per_second": len(encoded) / max(summaries.seconds, 1e-9),
        "batch_size": batch_size,
        "num_beams": generation.num_beams,
        "max_new_tokens": generation.max_new_tokens,
        "form": form,
        "device": str(target),
    }

    # Each generated summary sits next to its references, then its scores and costs, then the document.
    columns = {"line": loaded.line_numbers, "generated": summaries.texts}
    if loaded.references is not None:
        for position, column in enumerate(loaded.reference_columns):
            columns[column] = [references[position] for references in loaded.references]
        columns.update(per_example)
    columns.update(
        generated_tokens=summaries.generated_tokens,
        mean_exit_layer_encoder=summaries.encoder_exit_means,
        mean_exit_layer_decoder=summaries.decoder_exit_means,
        macs=total_macs,
        document=loaded.documents,
    )
    return EvaluationResult(row, pd.DataFrame(columns))
