"""`count-flops` for summarisation checkpoints: fvcore on the real greedy generation of each document.

Each document is encoded and decoded alone, greedily up to the checkpoint's
maximum target length, and every forward is traced (see ``fvcore_count``).
The row keeps the layout of the classifier's count (key columns, unit,
mean, median, the analytic figure and the full model's) and adds the
encoder's and decoder's shares and the decoder's cost per generated token.
LayerNorm is left out, as in the analytic model and the classifier's count.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hashee_cli.data.reading import DataConfig
from hashee_cli.devices import resolve_device
from hashee_cli.errors import HasheeError
from hashee_cli.seq2seq.checkpoint import load_seq2seq_checkpoint
from hashee_cli.seq2seq.data import encode_summaries, load_summaries, subsample_summaries
from hashee_cli.seq2seq.flops import Seq2SeqCosts, full_decoding_macs
from hashee_cli.seq2seq.fvcore_count import count_generation_macs
from hashee_cli.seq2seq.generation import GenerationSettings, generate


def count_summarizer(settings, unit: str, scale: int, on_example=None):
    """Count the generation cost of every document of a split with fvcore and the analytic model.

    ``settings`` is a ``CountSettings`` naming a summarisation checkpoint;
    ``unit`` and ``scale`` turn MACs into the requested unit.
    """
    # Imported here because hashee_cli.counting imports this module.
    from hashee_cli.counting import CountResult, summary_columns

    if settings.form != "auto":
        raise HasheeError(
            f"--form {settings.form} does not apply to summarisation checkpoints: generation runs the gathered "
            "form for HashEE and the dense form for the full model; drop --form"
        )
    device = resolve_device(settings.device)
    checkpoint = load_seq2seq_checkpoint(settings.checkpoint, device)
    data = DataConfig.from_dict({**checkpoint.settings.get("data", {}), **settings.data_options})
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    generation = GenerationSettings(max_new_tokens=data.max_target_length)
    model.check_lengths(data.max_seq_length, data.max_target_length)

    split = load_summaries(data, checkpoint.task, settings.split, require_summaries=False)
    split = subsample_summaries(split, settings.limit, settings.seed)
    if len(split) == 0:
        raise HasheeError(f"{split.source} has no documents to count; check the split and --limit")
    encoded = encode_summaries(split, tokenizer, data.max_seq_length, data.max_target_length, model.decoder_start_token_id)
    costs = Seq2SeqCosts.from_model(model)

    size = len(encoded)
    counted_encoder, counted_decoder = np.zeros(size), np.zeros(size)
    analytic, full_model = np.zeros(size), np.zeros(size)
    generated = np.zeros(size, dtype=np.int64)
    uncounted: Counter = Counter()
    for index, ids in enumerate(encoded.input_ids):
        input_ids = torch.tensor([ids], device=device)  # (1, S), no padding
        attention_mask = torch.ones_like(input_ids)
        count = count_generation_macs(model, input_ids, attention_mask, generation, include_norms=False)
        with torch.inference_mode():
            output = generate(model, input_ids, attention_mask, generation)
        counted_encoder[index], counted_decoder[index] = count.encoder_macs, count.decoder_macs
        analytic[index] = float(output.encoder_macs[0] + output.decoder_macs[0])
        generated[index] = count.generated_tokens
        # The full model fed the same number of tokens: same steps, every layer.
        full_model[index] = full_decoding_macs(costs, len(ids), count.generated_tokens)
        uncounted.update(dict.fromkeys(count.uncounted_ops, 1))
        if on_example is not None:
            on_example(index + 1)

    counted = (counted_encoder + counted_decoder) * scale
    analytic, full_model = analytic * scale, full_model * scale
    tokens = max(int(generated.sum()), 1)
    table = checkpoint.hash_table
    row = {
        "run": Path(settings.checkpoint).name,
        "checkpoint": str(settings.checkpoint),
        "task": checkpoint.task.name,
        "split": settings.split,
        "method": checkpoint.method,
        "hash_method": table.method if table else "",
        "exit_layers": " ".join(map(str, table.exit_layers)) if table else "",
        "num_layers": model.num_layers,
        "model": checkpoint.settings.get("model", ""),
        "form": "gathered" if model.assigner is not None else "dense",
        "num_examples": size,
        "num_truncated": encoded.num_truncated_documents,
        "flops_unit": unit,
        **summary_columns(counted, analytic, full_model),
        "counted_encoder_flops_mean": float(counted_encoder.mean() * scale),
        "counted_decoder_flops_mean": float(counted_decoder.mean() * scale),
        "generated_tokens_mean": float(generated.mean()),
        # The decoder's work (language-model head included) per generated token, the end token included.
        "counted_flops_per_generated_token": float(counted_decoder.sum() * scale / tokens),
        "max_new_tokens": generation.max_new_tokens,
        "decoding": "greedy",
        "uncounted_ops": "; ".join(f"{op} ({examples} examples)" for op, examples in sorted(uncounted.items())),
        "counter": f"fvcore {importlib.metadata.version('fvcore')}",
        "limit": settings.limit if settings.limit is not None else "",
        "seed": settings.seed,
        "max_seq_length": data.max_seq_length,
        "device": str(device),
    }
    examples = pd.DataFrame(
        {
            "line": split.line_numbers,
            "num_tokens": encoded.lengths,
            "generated_tokens": generated,
            "counted_flops": counted,
            "counted_encoder_flops": counted_encoder * scale,
            "counted_decoder_flops": counted_decoder * scale,
            "analytic_flops": analytic,
            "full_model_flops": full_model,
            "flops_unit": unit,
        }
    )
    return CountResult(row, examples, None)
